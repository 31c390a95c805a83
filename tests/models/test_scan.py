"""The selective scan against a step-by-step transcription of mamba's ``selective_scan_ref``."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from napari_medseg.models import scan
from napari_medseg.models.scan import chunked


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """mamba_ssm.ops.selective_scan_interface.selective_scan_ref for real A, one step per loop turn."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    B, C = B.float(), C.float()
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 2:
        delta_B_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif B.dim() == 3:
        delta_B_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
        delta_B_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    for i in range(u.shape[2]):
        x = delta_A[:, :, i] * x + delta_B_u[:, :, i]
        if C.dim() == 2:
            y = torch.einsum("bdn,dn->bd", x, C)
        elif C.dim() == 3:
            y = torch.einsum("bdn,bn->bd", x, C[:, :, i])
        else:
            y = torch.einsum("bdn,bdn->bd", x, C[:, :, :, i])
        ys.append(y)
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


def make_inputs(batch=2, dim=16, state=4, length=150, groups=4, bc="grouped", seed=0, delta_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * delta_scale
    log_a = torch.log(torch.arange(1.0, state + 1)).expand(dim, state) + 0.1 * torch.randn(dim, state, generator=g)
    A = -torch.exp(log_a)
    shape = {"grouped": (batch, groups, state, length), "shared": (batch, state, length), "constant": (dim, state)}[bc]
    B, C = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    D = 1 + 0.1 * torch.randn(dim, generator=g)
    z = torch.randn(batch, dim, length, generator=g)
    bias = -2 + 0.1 * torch.randn(dim, generator=g)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def relative_error(got, expected):
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@pytest.fixture
def small_blocks(monkeypatch):
    """Force several blocks and chunks even for short test sequences."""
    monkeypatch.setattr(chunked, "CPU_BLOCK_ELEMENTS", 2048)


CASES = [
    dict(bc="grouped", use_d=True, use_z=False, softplus=True, bias=True),  # VMamba's call
    dict(bc="grouped", use_d=False, use_z=True, softplus=False, bias=False),
    dict(bc="shared", use_d=True, use_z=True, softplus=True, bias=True),
    dict(bc="constant", use_d=True, use_z=False, softplus=True, bias=False),
]


def _args(inputs, case):
    return dict(
        D=inputs["D"] if case["use_d"] else None,
        z=inputs["z"] if case["use_z"] else None,
        delta_bias=inputs["delta_bias"] if case["bias"] else None,
        delta_softplus=case["softplus"],
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_forward_and_backward_match_reference(case, small_blocks):
    inputs = make_inputs(bc=case["bc"])
    if not case["softplus"]:  # raw deltas must be positive for a decaying recurrence
        inputs["delta"] = inputs["delta"].abs() * 0.2
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    extra = _args(leaves, case)
    ref_extra = _args(ref_leaves, case)
    out = chunked.chunked_selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], **extra)
    expected = reference_scan(ref_leaves["u"], ref_leaves["delta"], ref_leaves["A"], ref_leaves["B"], ref_leaves["C"],
                              **ref_extra)
    assert relative_error(out, expected) < 1e-5
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    (expected * weight).sum().backward()
    for name, leaf in leaves.items():
        ref_grad = ref_leaves[name].grad
        if ref_grad is None:
            assert leaf.grad is None or not leaf.grad.any(), name
            continue
        assert relative_error(leaf.grad, ref_grad) < 1e-5, name


def test_last_state_long_sequence_and_fast_decay(small_blocks):
    # large deltas make exp(-cumsum(delta * A)) overflow in a naive log-space scan; this one stays exact
    inputs = make_inputs(batch=1, dim=8, state=16, length=1000, delta_scale=8.0, seed=3)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    out, last = scan.selective_scan(*args, delta_bias=inputs["delta_bias"], delta_softplus=True,
                                    return_last_state=True, backend="torch")
    expected, expected_last = reference_scan(*args, delta_bias=inputs["delta_bias"], delta_softplus=True,
                                             return_last_state=True)
    assert torch.isfinite(out).all()
    assert relative_error(out, expected) < 1e-5
    assert relative_error(last, expected_last) < 1e-5


def test_low_precision_inputs_keep_dtype():
    inputs = make_inputs(length=64)
    u = inputs["u"].to(torch.bfloat16)
    out = scan.selective_scan(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"],
                              delta_softplus=True, backend="torch")
    expected = reference_scan(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"],
                              delta_softplus=True)
    assert out.dtype == torch.bfloat16
    assert relative_error(out.float(), expected.float()) < 1e-2


def test_dispatch(monkeypatch):
    monkeypatch.delenv("NAPARI_MEDSEG_SCAN", raising=False)
    assert scan.backend_for(torch.device("cpu")) == "torch"
    monkeypatch.setenv("NAPARI_MEDSEG_SCAN", "torch")
    assert scan.backend_for(torch.device("cuda")) == "torch"
    monkeypatch.setenv("NAPARI_MEDSEG_SCAN", "fast")
    with pytest.raises(ValueError, match="NAPARI_MEDSEG_SCAN"):
        scan.backend_for(torch.device("cpu"))
    inputs = make_inputs(length=32)
    with pytest.raises(ValueError, match="Unknown selective-scan backend"):
        scan.selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], backend="cuda")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        scan.selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], backend="mamba_ssm")


def test_complex_A_is_refused():
    inputs = make_inputs(length=8)
    with pytest.raises(NotImplementedError, match="real A"):
        chunked.chunked_selective_scan(inputs["u"], inputs["delta"], inputs["A"].to(torch.complex64),
                                       inputs["B"], inputs["C"])


def test_work_is_not_a_python_loop_over_the_sequence():
    """The number of tensor operations stays flat when the sequence gets 16x longer (speed: bench_scan.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    def operations(length):
        inputs = make_inputs(batch=1, dim=8, state=4, length=length)
        Count.calls = 0
        with torch.no_grad(), Count():
            chunked.chunked_selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                           inputs["D"], delta_bias=inputs["delta_bias"], delta_softplus=True)
        return Count.calls

    short, long = operations(256), operations(4096)
    assert long < 1.5 * short, (short, long)


@pytest.mark.gpu
def test_cuda_backends_agree():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    inputs = {k: v.cuda() for k, v in make_inputs(batch=2, dim=64, state=16, length=4096).items()}
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    own = scan.selective_scan(*args, delta_bias=inputs["delta_bias"], delta_softplus=True, backend="torch")
    expected = reference_scan(*args, delta_bias=inputs["delta_bias"], delta_softplus=True)
    assert relative_error(own, expected) < 1e-5
    if scan.mamba_ssm_scan() is None:
        pytest.skip("mamba_ssm not installed")
    kernel = scan.selective_scan(*args, delta_bias=inputs["delta_bias"], delta_softplus=True, backend="mamba_ssm")
    assert relative_error(kernel, expected) < 1e-3


def test_cpu_softplus_matches_float64():
    x = torch.cat([torch.linspace(-80, 120, 200_001), torch.tensor([20.0, 20.0001, 19.9999, 0.0, -1e-8])])
    with chunked._Scratch(x.device) as scratch:
        got = chunked._softplus(x, scratch).double()
    expected = torch.where(x > 20, x.double(), F.softplus(x.double()))  # torch's threshold
    error = (got - expected).abs() / expected
    assert error[x >= -20].max() < 1e-6
    # below, exp2's rounded argument (|x| 2^-24 relative) shows; such deltas (< 2e-9) leave the states as they are
    assert error.max() < 1e-5


@pytest.mark.parametrize("use_z", [False, True])
def test_scratch_memory_is_reused_and_never_handed_out(use_z, small_blocks):
    """Two scans in one graph (two layers) give what each gives alone: nothing returned or saved for
    backward lives in the scratch arena that the next call overwrites."""
    def forward(seed):
        leaves = {k: v.requires_grad_(True) for k, v in make_inputs(seed=seed).items()}
        out = chunked.chunked_selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                             leaves["D"], leaves["z"] if use_z else None, leaves["delta_bias"],
                                             delta_softplus=True)
        return out, leaves

    out, leaves = forward(1)
    out.sum().backward()
    alone = [out.detach().clone()] + [leaf.grad.clone() for leaf in leaves.values() if leaf.grad is not None]
    arena = chunked._Scratch._arena
    first, first_leaves = forward(1)
    second, _ = forward(2)
    (first.sum() + second.sum()).backward()
    together = [first.detach()] + [leaf.grad for leaf in first_leaves.values() if leaf.grad is not None]
    assert chunked._Scratch._arena is arena  # the same memory served every call
    for got, expected in zip(together, alone, strict=True):
        assert torch.equal(got, expected)


def test_scratch_memory_serves_calls_in_and_out_of_inference_mode(monkeypatch):
    monkeypatch.setattr(chunked._Scratch, "_arena", None)
    inputs = make_inputs()
    call = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    with torch.inference_mode():  # sizes the arena
        inside = chunked.chunked_selective_scan(*call, delta_bias=inputs["delta_bias"], delta_softplus=True)
    with torch.no_grad():
        outside = chunked.chunked_selective_scan(*call, delta_bias=inputs["delta_bias"], delta_softplus=True)
    assert chunked._Scratch._arena is not None
    assert torch.equal(inside, outside)
