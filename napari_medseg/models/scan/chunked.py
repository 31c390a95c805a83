"""Chunk-parallel selective scan in plain PyTorch (any device), with an exact hand-written backward.

Semantics are those of mamba's ``selective_scan_ref`` for real ``A``::

    delta = softplus(delta + delta_bias)                  (each optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,   h_{-1} = 0
    y_t   = <h_t, C_t> + D * u_t,   out = y * silu(z)     (D, z optional)

The sequence is cut into chunks of ``T`` steps. A first sweep over the ``T`` steps carries every chunk
from a zero state to its end (one tensor operation per step for all chunks and channels at once); a
log-depth (Hillis-Steele) scan over the chunks turns these into each chunk's true start state, and a
second sweep writes the states from there. Only products of decays ``exp(delta * A) <= 1`` are formed,
so this is as stable as the reference recurrence (no ``exp(-cumsum(delta * A))``, which overflows for
long chunks or fast decays). Chunks are processed in blocks sized to a memory budget, in buffers that
are reused from block to block; on the CPU all intermediates live in scratch memory kept between calls
(``_Scratch``). The backward pass recomputes the states block by block from the saved block start
states and runs the adjoint recurrence backwards with the same scheme.

Layout: ``(batch, groups, chunks, T, N, channels per group)``: a time step of all chunks is a slice with
contiguous runs of ``N * channels`` elements, the layout is one batched 2-D transpose of the
``(batch, channels, L)`` inputs away, and ``<h, C>`` is a batched ``(1, N) @ (N, channels)`` product.
"""
from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

# elements of one (b, G, M, T, N, Dg) buffer; a block holds a few of them
CPU_BLOCK_ELEMENTS = 1 << 21
GPU_BLOCK_ELEMENTS = 1 << 26
CHUNK = 16  # steps per chunk (at most): the per-step loop costs 2 * CHUNK operations per block
LOG2_E = math.log2(math.e)  # exp(x) is computed as exp2(x log2 e): PyTorch's CPU exp2 is 4x faster than exp
SCRATCH_LIMIT = 1 << 25  # float32 elements (128 MiB) of CPU scratch memory kept between calls, at most


def _plan(length: int, per_step: int, device: torch.device) -> tuple[int, int]:
    """(chunk length T, chunks per block M) for ``length`` steps of ``per_step`` state elements."""
    budget = GPU_BLOCK_ELEMENTS if device.type == "cuda" else CPU_BLOCK_ELEMENTS
    steps = max(1, min(length, budget // max(per_step, 1)))
    chunk = CHUNK if steps >= CHUNK * CHUNK else max(2, 1 << (math.isqrt(steps).bit_length() - 1))
    return chunk, max(1, steps // chunk)


class _Scratch:
    """Memory for the intermediates of one scan call, reused from call to call on the CPU.

    Memory that the C allocator has just obtained from the OS costs a page fault per 4 KiB page when first
    written (about 1 us each in a VM: a third of the scan's time); the CUDA caching allocator already
    reuses memory. One arena serves the process, taken by one call at a time (a concurrent call allocates
    normally). It grows to the largest need seen, up to ``SCRATCH_LIMIT`` elements, and is kept. Nothing
    a call returns or saves for backward may come from it.
    """

    _lock = threading.Lock()
    _arena: torch.Tensor | None = None

    def __init__(self, device: torch.device):
        self.device = device
        self.owner = device.type == "cpu" and _Scratch._lock.acquire(blocking=False)
        self.used = 0

    def __enter__(self) -> "_Scratch":
        return self

    def __exit__(self, *exc) -> None:
        if self.owner:
            arena = _Scratch._arena
            if (0 if arena is None else arena.numel()) < self.used <= SCRATCH_LIMIT:
                with torch.inference_mode(False):  # usable in and out of inference mode
                    _Scratch._arena = torch.empty(self.used)
            _Scratch._lock.release()

    def empty(self, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        if self.owner:
            start = self.used
            self.used += -(-numel // 16) * 16  # 64-byte aligned
            arena = _Scratch._arena
            if arena is not None and self.used <= arena.numel():
                return arena[start:start + numel].view(shape)
        return torch.empty(shape, device=self.device)


def _softplus(x: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """torch's softplus (threshold 20). On the CPU log1p(e) is computed as log(w) - ((w - 1) - e) / w with
    w = 1 + e (the rounding of w corrected to first order; a few ulps like log1p itself), and e with exp2:
    PyTorch's CPU log1p is not vectorised and costs 12x more."""
    if x.device.type != "cpu":
        return F.softplus(x)
    e = torch.clamp(x, max=20.0, out=scratch.empty(*x.shape)).mul_(LOG2_E).exp2_()
    w = torch.add(e, 1.0, out=scratch.empty(*x.shape))
    rounding = torch.sub(w, 1.0, out=scratch.empty(*x.shape)).sub_(e).div_(w)
    return torch.maximum(w.log_().sub_(rounding), x, out=w)  # softplus(x) >= x, equal above the threshold


def _swap_last(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[...] = x.transpose(-1, -2)``; on the CPU as 2-D copies, which PyTorch copies in cache-sized
    tiles (twice as fast as the general strided copy)."""
    if x.device.type != "cpu" or math.prod(x.shape[:-2]) > 256:
        return out.copy_(x.transpose(-1, -2))
    x = x.contiguous()
    for source, target in zip(x.view(-1, *x.shape[-2:]), out.view(-1, *out.shape[-2:])):
        target.copy_(source.t())
    return out


def _to_chunks(x: torch.Tensor, chunk: int, groups: int, scratch: _Scratch) -> torch.Tensor:
    """(b, K, L) -> (b, G, chunks, T, K // G), zero-padded to whole chunks, in scratch memory."""
    b, k, length = x.shape
    if length % chunk:
        x = F.pad(x, (0, -length % chunk))
    x = x.reshape(b, groups, k // groups, -1)
    x = _swap_last(x, scratch.empty(b, groups, x.shape[-1], k // groups))
    return x.view(b, groups, -1, chunk, k // groups)


def _from_chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """(b, G, chunks, T, K // G) -> (b, K, length), in new memory."""
    b, g, m, t, k = x.shape
    out = x.new_empty(b, g, k, m * t)
    return _swap_last(x.reshape(b, g, m * t, k), out).view(b, g * k, m * t)[..., :length]


class _StatePart:
    """B or C: variable (b, G_x, N, L) / (b, N, L), or constant (D, N), laid out as (b, G, chunks, T, N)."""

    def __init__(self, x: torch.Tensor, batch: int, channels: int, groups: int, chunk: int, scratch: _Scratch):
        self.shape, self.dtype = x.shape, x.dtype
        self.constant = x.dim() == 2
        if self.constant:  # one group per channel, the same at every step
            self.own_groups = channels
            self.chunked = x.float().view(1, channels, 1, 1, x.shape[-1])
            return
        x = x.float().view(batch, -1, x.shape[-2], x.shape[-1])
        self.own_groups = x.shape[1]
        x = x.repeat_interleave(groups // self.own_groups, dim=1)
        self.chunked = _to_chunks(x.reshape(batch, -1, x.shape[-1]), chunk, groups, scratch)

    @staticmethod
    def groups(x: torch.Tensor, channels: int) -> int:
        return channels if x.dim() == 2 else 1 if x.dim() == 3 else x.shape[1]

    def block(self, first: int, last: int) -> torch.Tensor:
        return self.chunked if self.constant else self.chunked[:, :, first:last]

    def gradient(self, grad: torch.Tensor, length: int) -> torch.Tensor:
        """(b, G, chunks, T, N) gradient in the scan's groups -> the input's own shape."""
        if self.constant:
            return grad.sum((0, 2, 3)).to(self.dtype)
        b, g, m, t, n = grad.shape
        grad = _from_chunks(grad, length).view(b, self.own_groups, g // self.own_groups, n, length).sum(2)
        return grad.reshape(self.shape).to(self.dtype)


def _linear_scan(coef: torch.Tensor, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """s_m = coef_m * s_(m-1) + x_m along dim 2 (from the last m if ``reverse``), s before the first = 0.

    Hillis-Steele doubling: log2(M) rounds of whole-tensor operations over the chunk axis, each round
    writing into the other of two buffers (the inputs are left as they are).
    """
    if reverse:
        coef, x = coef.flip(2), x.flip(2)
    chunks = x.shape[2]
    xs, coefs = [torch.empty_like(x) for _ in range(2)], [torch.empty_like(coef) for _ in range(2)]
    step, rounds = 1, 0
    while step < chunks:
        target = xs[rounds % 2]
        target[:, :, :step] = x[:, :, :step]
        torch.addcmul(x[:, :, step:], coef[:, :, step:], x[:, :, :-step], out=target[:, :, step:])
        x = target
        if 2 * step < chunks:
            target = coefs[rounds % 2]
            target[:, :, :step] = coef[:, :, :step]
            torch.mul(coef[:, :, step:], coef[:, :, :-step], out=target[:, :, step:])
            coef = target
        step, rounds = 2 * step, rounds + 1
    return x.flip(2) if reverse else x


def _forward_states(decay: torch.Tensor, states: torch.Tensor, chunk_decay: torch.Tensor,
                    start: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_(t-1) + x_t for a block, in place: ``states`` holds x (b, G, M, T, N, Dg) on entry.

    ``decay`` holds a, ``chunk_decay`` (b, G, M, N, Dg) its product over each chunk and ``start``
    (b, G, N, Dg) the state before the block. Returns the state after the block.
    """
    steps = states.shape[3]
    ends = states[:, :, :, 0].clone()
    for t in range(1, steps):  # every chunk's end state from a zero start, all chunks at once
        torch.addcmul(states[:, :, :, t], decay[:, :, :, t], ends, out=ends)
    ends[:, :, 0].addcmul_(chunk_decay[:, :, 0], start)
    ends = _linear_scan(chunk_decay, ends)  # true end states
    states[:, :, :, 0].addcmul_(decay[:, :, :, 0], torch.cat([start.unsqueeze(2), ends[:, :, :-1]], dim=2))
    for t in range(1, steps):
        states[:, :, :, t].addcmul_(decay[:, :, :, t], states[:, :, :, t - 1])
    return ends[:, :, -1]


def _backward_states(decay: torch.Tensor, adjoints: torch.Tensor, chunk_decay: torch.Tensor,
                     incoming: torch.Tensor) -> torch.Tensor:
    """g_t = a_(t+1) g_(t+1) + x_t for a block, in place: ``adjoints`` holds x on entry.

    ``incoming`` (b, G, N, Dg) is a g at the first step after the block; returns the same for the
    block's own first step.
    """
    steps = adjoints.shape[3]
    firsts = adjoints[:, :, :, -1].clone()
    for t in range(steps - 2, -1, -1):  # every chunk's first adjoint without the later chunks
        torch.addcmul(adjoints[:, :, :, t], decay[:, :, :, t + 1], firsts, out=firsts)
    flows = decay[:, :, :, 0] * firsts  # a g at each chunk's first step
    flows[:, :, -1].addcmul_(chunk_decay[:, :, -1], incoming)
    flows = _linear_scan(chunk_decay, flows, reverse=True)
    adjoints[:, :, :, -1] += torch.cat([flows[:, :, 1:], incoming.unsqueeze(2)], dim=2)
    for t in range(steps - 2, -1, -1):
        adjoints[:, :, :, t].addcmul_(decay[:, :, :, t + 1], adjoints[:, :, :, t + 1])
    return flows[:, :, 0]


class _Problem:
    """Inputs in the chunked layout, and the blocks of chunks; shared by forward and backward."""

    def __init__(self, u, delta, A, B, C, delta_bias, delta_softplus, scratch: _Scratch):
        if A.is_complex():
            raise NotImplementedError("The PyTorch selective scan supports real A only (as every VMamba model)")
        self.batch, self.channels, self.length = u.shape
        self.state_size = A.shape[1]
        groups = max(_StatePart.groups(B, self.channels), _StatePart.groups(C, self.channels))
        if self.channels % groups or any(groups % _StatePart.groups(x, self.channels) for x in (B, C)):
            raise ValueError(f"B/C groups of shapes {tuple(B.shape)}, {tuple(C.shape)} do not fit "
                             f"{self.channels} channels")
        self.groups = groups
        self.chunk, self.block_chunks = _plan(self.length, self.batch * self.channels * self.state_size, u.device)
        self.scratch = scratch
        delta = delta.float()
        if delta_bias is not None:
            delta = torch.add(delta, delta_bias.float()[:, None], out=scratch.empty(*delta.shape))
        self.raw_delta = delta  # softplus's input (its derivative is needed in backward)
        if delta_softplus:
            delta = _softplus(delta, scratch)
        self.u = u.float()
        self.delta_chunks = _to_chunks(delta, self.chunk, groups, scratch).unsqueeze(-2)  # (b, G, chunks, T, 1, Dg)
        delta_u = torch.mul(delta, self.u, out=scratch.empty(*delta.shape))
        self.delta_u_chunks = _to_chunks(delta_u, self.chunk, groups, scratch).unsqueeze(-2)
        self.B = _StatePart(B, self.batch, self.channels, groups, self.chunk, scratch)
        self.C = _StatePart(C, self.batch, self.channels, groups, self.chunk, scratch)
        # A as (1, G, 1, 1, N, Dg) to broadcast over (b, G, M, T, N, Dg)
        # (contiguous: a strided inner dimension makes the broadcast multiply as slow as the exponential)
        A = A.float().view(groups, self.channels // groups, self.state_size).transpose(1, 2).contiguous()
        self.A = A[None, :, None, None]
        self.A_log2 = self.A * LOG2_E
        chunks = self.delta_chunks.shape[2]
        self.blocks = [(m, min(m + self.block_chunks, chunks)) for m in range(0, chunks, self.block_chunks)]

    def buffers(self, count: int) -> list[torch.Tensor]:
        """``count`` reusable (b, G, M, T, N, Dg) block buffers (allocated once: they stay in cache)."""
        b, g, _, t, _, dg = self.delta_chunks.shape
        return [self.scratch.empty(b, g, self.block_chunks, t, self.state_size, dg) for _ in range(count)]

    def inputs(self, first: int, last: int, decay: torch.Tensor, inputs: torch.Tensor):
        """Decays a, inputs delta*u*B (into the buffers) and chunk decays of chunks [first, last)."""
        decay, inputs = decay[:, :, :last - first], inputs[:, :, :last - first]
        delta = self.delta_chunks[:, :, first:last]
        torch.exp2(torch.mul(delta, self.A_log2, out=decay), out=decay)
        torch.mul(self.delta_u_chunks[:, :, first:last], self.B.block(first, last).unsqueeze(-1), out=inputs)
        chunk_decay = torch.mul(delta.sum(3), self.A_log2[:, :, :, 0]).exp2_()
        return decay, inputs, chunk_decay

    def zero_state(self) -> torch.Tensor:
        return self.u.new_zeros(self.batch, self.groups, self.state_size, self.channels // self.groups)


class SelectiveScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        with _Scratch(u.device) as scratch:
            p = _Problem(u, delta, A, B, C, delta_bias, delta_softplus, scratch)
            y = scratch.empty(*p.delta_chunks.shape)
            state = p.zero_state()
            starts = []
            buffers = p.buffers(2)
            for first, last in p.blocks:
                starts.append(state)
                decay, states, chunk_decay = p.inputs(first, last, *buffers)
                state = _forward_states(decay, states, chunk_decay, state)
                torch.matmul(p.C.block(first, last).unsqueeze(-2), states, out=y[:, :, first:last])
            y = _from_chunks(y.squeeze(-2), p.length)
        if D is not None:
            y.addcmul_(p.u, D.float()[:, None])
        out = y if z is None else y * F.silu(z.float())
        last_state = state.transpose(2, 3).reshape(p.batch, p.channels, p.state_size)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, y if z is not None else None, torch.stack(starts))
        ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(last_state)
        return out.to(u.dtype), last_state

    @staticmethod
    def backward(ctx, grad_out, _grad_last_state):
        u, delta, A, B, C, D, z, delta_bias, y, starts = ctx.saved_tensors
        grad_out = grad_out.float()
        grad_z = None
        if z is not None:
            sig = torch.sigmoid(z.float())
            grad_z = (grad_out * y * sig * (1 + z.float() * (1 - sig))).to(z.dtype)
            grad_out = grad_out * z.float() * sig
        with _Scratch(u.device) as scratch:
            p = _Problem(u, delta, A, B, C, delta_bias, ctx.delta_softplus, scratch)
            grad_y = _to_chunks(grad_out, p.chunk, p.groups, scratch).unsqueeze(-2)  # (b, G, chunks, T, 1, Dg)
            u_chunks = _to_chunks(p.u, p.chunk, p.groups, scratch).unsqueeze(-2)
            grad_u, grad_delta = (scratch.empty(*grad_y.shape) for _ in range(2))
            grad_B, grad_C = (scratch.empty(*grad_y.shape[:4], p.state_size) for _ in range(2))
            grad_A = torch.zeros_like(p.A[0, :, 0, 0])  # (G, N, Dg)
            flow = torch.zeros_like(starts[0])
            buffers = p.buffers(3)
            for index in range(len(p.blocks) - 1, -1, -1):
                first, last = p.blocks[index]
                part = (slice(None), slice(None), slice(first, last))
                decay, states, chunk_decay = p.inputs(first, last, *buffers[:2])
                _forward_states(decay, states, chunk_decay, starts[index])
                grad_C[part] = torch.matmul(states, grad_y[part].transpose(-1, -2)).squeeze(-1)
                adjoints = torch.mul(p.C.block(first, last).unsqueeze(-1), grad_y[part],
                                     out=buffers[2][:, :, :last - first])
                flow = _backward_states(decay, adjoints, chunk_decay, flow)
                grad_B[part] = torch.matmul(adjoints, p.delta_u_chunks[part].transpose(-1, -2)).squeeze(-1)
                B_rows = p.B.block(first, last).unsqueeze(-2)  # (b, G, M, T, 1, N)
                B_adjoint = torch.matmul(B_rows, adjoints)  # sum_n B g
                grad_u[part] = B_adjoint * p.delta_chunks[part]
                # a_t h_(t-1) = h_t - delta_t u_t B_t: the decay's share of d/d(delta) is sum_n A a_t h_(t-1) g_t
                states.sub_(p.delta_u_chunks[part] * B_rows.transpose(-1, -2)).mul_(adjoints)
                grad_A += torch.mul(states, p.delta_chunks[part], out=decay).sum((0, 2, 3))
                grad_delta[part] = B_adjoint * u_chunks[part] + states.mul_(p.A).sum(-2, keepdim=True)
            grad_u = _from_chunks(grad_u.squeeze(-2), p.length)
            grad_delta = _from_chunks(grad_delta.squeeze(-2), p.length)
            if ctx.delta_softplus:
                grad_delta.mul_(torch.sigmoid(p.raw_delta))
            grad_B, grad_C = p.B.gradient(grad_B, p.length), p.C.gradient(grad_C, p.length)
        grad_D = None
        if D is not None:
            grad_D = (grad_out * p.u).sum((0, 2)).to(D.dtype)
            grad_u = grad_u + grad_out * D.float()[:, None]
        grad_bias = grad_delta.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        grad_A = grad_A.transpose(1, 2).reshape(A.shape).to(A.dtype)
        return (grad_u.to(u.dtype), grad_delta.to(delta.dtype), grad_A, grad_B, grad_C, grad_D, grad_z, grad_bias,
                None)


@torch.compiler.disable  # a loop of many small operations: tracing it would only unroll it
def chunked_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False):
    """mamba's ``selective_scan_fn`` in PyTorch: shapes u, delta (b, D, L); A (D, N); B, C (b, G, N, L),
    (b, N, L) or (D, N); D (D,); z (b, D, L); delta_bias (D,). Returns out (b, D, L) in u's dtype and,
    if asked, the last state (b, D, N) in fp32."""
    out, last_state = SelectiveScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last_state) if return_last_state else out
