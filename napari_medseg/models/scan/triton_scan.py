"""The selective scan as a Triton kernel: mamba's ``selective_scan_fn`` forward (real A, inference only)
for CUDA GPUs without mamba_ssm.

One program scans ``BLOCK_D`` channels of one sequence and walks the sequence in tiles of ``BLOCK_L``
steps. Within a tile, an associative scan over (decay, input) pairs, with decay = exp(delta A) and
input = delta u B, gives every step's state started from zero together with the tile's cumulative decay;
the state carried in from the previous tile enters through that cumulative decay. Decays are products
of factors <= 1, so nothing can overflow however long the sequence. Then y = sum_n C h + D u, times
silu(z). State and accumulation are fp32; the output has u's dtype.

Importing this module imports triton: only ``napari_medseg.models.scan`` imports it, when the triton
backend is used.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# Launch configuration, the fastest of benchmarks/bench_scan.py --triton-sweep on an H100 (B=8 D=384 N=16
# L=4096: 0.44 ms, mamba_ssm 0.61 ms); tiles above 32 state values per thread spill registers.
BLOCK_L = 64  # sequence steps per tile
BLOCK_D = 2  # channels per program
NUM_WARPS = 2
STAGES = 2  # tiles whose loads are in flight at once (software pipelining; 1: none)
INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _chain(decay_a, state_a, decay_b, state_b):
    """Composition of h -> decay_a h + state_a, then h -> decay_b h + state_b."""
    return decay_a * decay_b, decay_b * state_a + state_b


@triton.jit
def _softplus(x):
    """torch's softplus (threshold 20); log1p(e) = log(1 + e) e / ((1 + e) - 1) keeps small e exact."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / tl.where(w == 1.0, 1.0, w - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _scan_tile(h, A, dt, u, B, C, BLOCK_L: tl.constexpr):
    """One tile: h (channels, N) carried in; dt, u (channels, BLOCK_L); B, C (channels or 1, N, BLOCK_L).

    Returns y = sum_n C h (channels, BLOCK_L) and the state after the tile's last step.
    """
    decay = tl.exp(dt[:, None, :] * A[:, :, None])
    inputs = (dt * u)[:, None, :] * B
    cumulative_decay, states = tl.associative_scan((decay, inputs), axis=2, combine_fn=_chain)
    states += cumulative_decay * h[:, :, None]
    last = tl.sum(tl.where(tl.arange(0, BLOCK_L)[None, None, :] == BLOCK_L - 1, states, 0.0), axis=2)
    return tl.sum(C * states, axis=1), last


@triton.jit
def _scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr,
    dim, dstate, length, B_channels_per_group, C_channels_per_group,
    u_sb, u_sd, u_sl, delta_sb, delta_sd, delta_sl, z_sb, z_sd, z_sl,
    B_sb, B_sg, B_sn, B_sl, C_sb, C_sg, C_sn, C_sl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_LAST: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    STAGES: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, BLOCK_L)
    channel_ok = channels < dim
    channel_state_ok = channel_ok[:, None] & (states < dstate)[None, :]

    A = tl.load(A_ptr + channels[:, None] * dstate + states[None, :], mask=channel_state_ok, other=0.0)
    if HAS_D:
        skip = tl.load(D_ptr + channels, mask=channel_ok, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0)
    u_rows = u_ptr + batch * u_sb + channels[:, None] * u_sd
    delta_rows = delta_ptr + batch * delta_sb + channels[:, None] * delta_sd
    z_rows = z_ptr + batch * z_sb + channels[:, None] * z_sd
    out_rows = out_ptr + (batch * dim + channels[:, None]) * length
    B_rows = (B_ptr + batch * B_sb + (channels // B_channels_per_group)[:, None, None] * B_sg
              + states[None, :, None] * B_sn)
    C_rows = (C_ptr + batch * C_sb + (channels // C_channels_per_group)[:, None, None] * C_sg
              + states[None, :, None] * C_sn)

    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for start in tl.range(0, length, BLOCK_L, num_stages=STAGES):  # STAGES > 1: next tiles' loads in flight
        positions = start + steps
        step_ok = positions < length
        channel_step_ok = channel_ok[:, None] & step_ok[None, :]
        tile_ok = channel_state_ok[:, :, None] & step_ok[None, None, :]
        u = tl.load(u_rows + positions[None, :] * u_sl, mask=channel_step_ok, other=0.0).to(tl.float32)
        dt = tl.load(delta_rows + positions[None, :] * delta_sl, mask=channel_step_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(channel_step_ok, dt, 0.0)  # padding steps: decay 1, input 0, the state passes through
        B = tl.load(B_rows + positions[None, None, :] * B_sl, mask=tile_ok, other=0.0).to(tl.float32)
        C = tl.load(C_rows + positions[None, None, :] * C_sl, mask=tile_ok, other=0.0).to(tl.float32)
        y, h = _scan_tile(h, A, dt, u, B, C, BLOCK_L)
        if HAS_D:
            y += skip[:, None] * u
        if HAS_Z:
            z = tl.load(z_rows + positions[None, :] * z_sl, mask=channel_step_ok, other=0.0).to(tl.float32)
            y *= z * tl.sigmoid(z)
        tl.store(out_rows + positions[None, :], y.to(out_ptr.dtype.element_ty), mask=channel_step_ok)
    if STORE_LAST:
        tl.store(last_ptr + (batch * dim + channels[:, None]) * dstate + states[None, :], h, mask=channel_state_ok)


def _per_sequence(bc, name: str, batch: int, dim: int, dstate: int, length: int):
    """(tensor, channels per group, batch/group/state/step strides) of a (b, G, N, L) or (b, N, L) B or C."""
    if bc.dim() == 2:
        raise NotImplementedError(f"The Triton selective scan needs per-step {name} (b, G, N, L); got {name} (D, N)")
    if bc.dim() == 3:
        bc = bc.unsqueeze(1)
    groups = bc.shape[1]
    if bc.shape != (batch, groups, dstate, length) or dim % groups:
        raise ValueError(f"{name} has shape {tuple(bc.shape)}; expected (b, G, N, L) = ({batch}, G, {dstate}, "
                         f"{length}) with G dividing D={dim}")
    return bc, dim // groups, bc.stride()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """out (b, D, L) in u's dtype, or (out, last_state (b, D, N) fp32); forward only, real A (D, N).

    Raises NotImplementedError for what the kernel does not cover (complex A, constant (D, N) B or C,
    float64 inputs), so that a caller can fall back to another backend.
    """
    if A.is_complex():
        raise NotImplementedError("The Triton selective scan supports real A only")
    if any(t is not None and t.dtype not in INPUT_DTYPES for t in (u, delta, z, B, C)):
        raise NotImplementedError("The Triton selective scan takes fp32, bf16 or fp16 u, delta, z, B and C")
    if u.device.type != "cuda" and not _interpreting():
        raise RuntimeError("The Triton selective scan needs CUDA tensors")
    batch, dim, length = u.shape
    dstate = A.shape[1]
    B, B_per_group, B_strides = _per_sequence(B, "B", batch, dim, dstate, length)
    C, C_per_group, C_strides = _per_sequence(C, "C", batch, dim, dstate, length)
    A = A.float().contiguous()
    skip = D.float().contiguous() if D is not None else A
    bias = delta_bias.float().contiguous() if delta_bias is not None else A
    out = torch.empty((batch, dim, length), dtype=u.dtype, device=u.device)
    last_state = torch.empty((batch, dim, dstate), dtype=torch.float32, device=u.device) if return_last_state else A
    gate = z if z is not None else u
    grid = (triton.cdiv(dim, BLOCK_D), batch)
    with torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext():
        _scan_kernel[grid](
            u, delta, A, B, C, skip, gate, bias, out, last_state,
            dim, dstate, length, B_per_group, C_per_group,
            *u.stride(), *delta.stride(), *gate.stride(), *B_strides, *C_strides,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), STORE_LAST=bool(return_last_state),
            BLOCK_D=BLOCK_D, BLOCK_N=triton.next_power_of_2(dstate), BLOCK_L=BLOCK_L, STAGES=STAGES,
            num_warps=NUM_WARPS,
        )
    return (out, last_state) if return_last_state else out
