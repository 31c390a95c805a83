"""The Triton selective scan against the transcription of mamba's ``selective_scan_ref``.

On CPU the kernel runs in Triton's interpreter. Triton decides at import time whether it interprets
(``TRITON_INTERPRET=1``), so those runs happen in one subprocess that executes this file as a script
and reports the errors as JSON; nothing leaks into the pytest process, which never imports triton.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_medseg.models import scan
from test_scan import make_inputs, reference_scan, relative_error

HAS_TRITON = importlib.util.find_spec("triton") is not None
REPO = Path(__file__).resolve().parents[2]

# Interpreted cases: short tiles (BLOCK_L 32) so that L=150 spans four full tiles and a partial one.
CASES = {
    "vmamba-grouped-strided-last": dict(state=16, bc="grouped", use_d=True, use_z=False, softplus=True, bias=True,
                                        strided=True, last=True),
    "grouped-z-raw-delta": dict(state=4, bc="grouped", use_d=False, use_z=True, softplus=False, bias=False),
    "shared-d-z-last": dict(state=4, bc="shared", use_d=True, use_z=True, softplus=True, bias=True, last=True),
    "ragged-channels-and-states": dict(state=5, dim=6, groups=2, block_d=4, bc="grouped", use_d=True,
                                       use_z=False, softplus=True, bias=True, last=True),
    "fast-decay": dict(state=4, bc="grouped", delta_scale=8.0, use_d=True, use_z=False, softplus=True, bias=True,
                       last=True),
    "bf16": dict(state=4, bc="grouped", use_d=True, use_z=True, softplus=True, bias=True, dtype="bfloat16"),
    "fp16": dict(state=4, bc="shared", use_d=True, use_z=False, softplus=True, bias=True, dtype="float16"),
}
LOW_PRECISION_TOLERANCE = {"bfloat16": 1e-2, "float16": 2e-3}


def _case_inputs(case):
    inputs = make_inputs(batch=2, dim=case.get("dim", 8), state=case["state"], length=150,
                         groups=case.get("groups", 4), bc=case["bc"], delta_scale=case.get("delta_scale", 0.5))
    if not case["softplus"]:  # raw deltas must be positive for a decaying recurrence
        inputs["delta"] = inputs["delta"].abs() * 0.2
    if case.get("strided"):  # B and C as slices of one projection, u every other channel: as SS2D makes them
        both = torch.cat([inputs["B"], inputs["C"]], dim=2)
        inputs["B"], inputs["C"] = torch.split(both, case["state"], dim=2)
        inputs["u"] = torch.stack([inputs["u"], inputs["u"] + 1], dim=2).flatten(1, 2)[:, ::2]
    dtype = getattr(torch, case.get("dtype", "float32"))
    for name in ("u", "delta", "z"):
        inputs[name] = inputs[name].to(dtype)
    call = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    options = dict(D=inputs["D"] if case["use_d"] else None, z=inputs["z"] if case["use_z"] else None,
                   delta_bias=inputs["delta_bias"] if case["bias"] else None, delta_softplus=case["softplus"],
                   return_last_state=case.get("last", False))
    return call, options


def _interpreted_report() -> dict:
    """Run in the subprocess (TRITON_INTERPRET=1): every case's errors and the dispatcher's fallbacks."""
    from napari_medseg.models.scan import triton_scan

    triton_scan.BLOCK_L = 32
    report = {}
    for name, case in CASES.items():
        triton_scan.BLOCK_D = case.get("block_d", 2)
        call, options = _case_inputs(case)
        got = triton_scan.triton_selective_scan(*call, **options)
        expected = reference_scan(*call, **options)
        if not options["return_last_state"]:
            got, expected = (got, None), (expected, None)
        report[name] = dict(
            out=relative_error(got[0].float(), expected[0].float()),
            finite=bool(torch.isfinite(got[0]).all()),
            dtype=got[0].dtype == call[0].dtype,
            shape=got[0].shape == call[0].shape,
            last=None if got[1] is None else relative_error(got[1], expected[1]),
        )
    call, options = _case_inputs(dict(CASES["shared-d-z-last"], bc="constant"))
    try:
        scan.selective_scan(*call, **options, backend="triton")
        report["constant_bc_refused"] = False
    except NotImplementedError:
        report["constant_bc_refused"] = True
    os.environ["NAPARI_MEDSEG_SCAN"] = "triton"  # chosen by environment: constant B/C falls back to torch
    got = scan.selective_scan(*call, **options)[0]
    report["constant_bc_fallback"] = relative_error(got, reference_scan(*call, **options)[0])
    return report


def run_interpreted(script: str) -> dict:
    """Run a test file as a script under Triton's interpreter, in a subprocess; its last line of output
    is a JSON report."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("NAPARI_MEDSEG_SCAN", None)
    done = subprocess.run([sys.executable, script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_kernel_matches_reference(interpreted, name):
    result = interpreted[name]
    tolerance = LOW_PRECISION_TOLERANCE.get(CASES[name].get("dtype"), 1e-5)
    assert result["finite"] and result["dtype"] and result["shape"], result
    assert result["out"] < tolerance, result
    if CASES[name].get("last"):
        assert result["last"] < tolerance, result


def test_constant_bc_is_refused_or_falls_back(interpreted):
    assert interpreted["constant_bc_refused"]
    assert interpreted["constant_bc_fallback"] < 1e-5


def test_dispatch_prefers_mamba_ssm_then_triton_for_inference(monkeypatch):
    monkeypatch.delenv("NAPARI_MEDSEG_SCAN", raising=False)
    monkeypatch.setattr(scan, "triton_available", lambda: True)
    monkeypatch.setattr(scan, "mamba_ssm_scan", lambda: None)
    cuda = torch.device("cuda")
    assert scan.backend_for(cuda) == "triton"
    assert scan.backend_for(cuda, needs_grad=True) == "torch"
    assert scan.backend_for(torch.device("cpu")) == "torch"
    monkeypatch.setattr(scan, "triton_available", lambda: False)
    assert scan.backend_for(cuda) == "torch"
    monkeypatch.setattr(scan, "mamba_ssm_scan", lambda: object())
    assert scan.backend_for(cuda) == "mamba_ssm"
    monkeypatch.setenv("NAPARI_MEDSEG_SCAN", "triton")
    assert scan.backend_for(torch.device("cpu")) == "triton"


def test_triton_backend_refuses_gradients():
    call, options = _case_inputs(CASES["grouped-z-raw-delta"])
    u = call[0].clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        scan.selective_scan(u, *call[1:], **options, backend="triton")


def test_importing_the_scan_package_does_not_import_triton():
    code = "import sys, napari_medseg.models.scan; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.gpu
def test_cuda_kernel_matches_reference():
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from napari_medseg.models.scan.triton_scan import triton_selective_scan

    inputs = {k: v.cuda() for k, v in make_inputs(batch=2, dim=64, state=16, length=4096).items()}
    call = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    options = dict(delta_bias=inputs["delta_bias"], delta_softplus=True, return_last_state=True)
    out, last = triton_selective_scan(*call, **options)
    expected, expected_last = reference_scan(*call, **options)
    assert relative_error(out, expected) < 1e-5
    assert relative_error(last, expected_last) < 1e-5
    gated = triton_selective_scan(*call, z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True)
    assert relative_error(gated, reference_scan(*call, z=inputs["z"], delta_bias=inputs["delta_bias"],
                                                delta_softplus=True)) < 1e-5
    low = triton_selective_scan(inputs["u"].bfloat16(), *call[1:], delta_bias=inputs["delta_bias"], delta_softplus=True)
    assert low.dtype == torch.bfloat16
    assert relative_error(low.float(), expected) < 1e-2


if __name__ == "__main__":
    print(json.dumps(_interpreted_report()))
