"""The Triton SS2D kernels (convolution into the four scan directions, merge + LayerNorm + gate) against the
transcription of the official SS2D forward.

On CPU the kernels run in Triton's interpreter in a subprocess (``run_interpreted``), with small tiles
so that every map spans several tiles of each kernel, the last ones partial.
"""
from __future__ import annotations

import json

import pytest
import torch

from test_scan import relative_error
from test_vmamba_models import official_ss2d, perturbed_ss2d

# (d_model, d_state, height, width): channels and maps that fill no tile exactly, H != W, one-row maps
CASES = {"16-channels-9x11": (8, 16, 9, 11), "40-channels-6x13": (20, 4, 6, 13), "single-row": (8, 4, 1, 21)}


def _interpreted_report() -> dict:
    """Run in the subprocess (TRITON_INTERPRET=1)."""
    from napari_medseg.models import triton_ss2d, vmamba

    triton_ss2d.CONV_TILE = (4, 8, 16)
    triton_ss2d.MERGE_TILE = (4, 4, 16)
    vmamba.fused_ss2d = lambda *_: True
    report = {}
    for name, (d_model, d_state, height, width) in CASES.items():
        module = perturbed_ss2d(d_model, d_state)
        x = torch.randn(2, height, width, d_model)
        with torch.no_grad():
            report[name] = relative_error(module(x), official_ss2d(module, x))
    return report


@pytest.mark.parametrize("name", list(CASES))
def test_interpreted_kernels_match_official_ss2d(interpreted, name):
    assert interpreted[name] < 1e-5, interpreted


def test_fused_path_only_for_cuda_inference(monkeypatch):
    from napari_medseg.models import vmamba

    monkeypatch.setattr(vmamba, "triton_available", lambda: True)
    module = perturbed_ss2d(8, 4)
    cpu = torch.zeros(1, 2, 2, 32)
    assert not vmamba.fused_ss2d(cpu, module)

    class FakeCuda:
        is_cuda = True
        dtype = torch.bfloat16
    assert not vmamba.fused_ss2d(FakeCuda(), module)  # gradients enabled for the module's weights
    with torch.no_grad():
        FakeCuda.dtype = torch.float32  # float32 keeps the official computation
        assert not vmamba.fused_ss2d(FakeCuda(), module)
        FakeCuda.dtype = torch.float16
        assert vmamba.fused_ss2d(FakeCuda(), module)
        monkeypatch.setattr(vmamba, "triton_available", lambda: False)
        assert not vmamba.fused_ss2d(FakeCuda(), module)


@pytest.mark.gpu
def test_cuda_fused_swin_umamba_is_as_close_to_float32_as_unfused():
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from napari_medseg.models import vmamba
    from napari_medseg.models.swin_umamba import SwinUMamba

    torch.manual_seed(0)
    network = SwinUMamba(1, 4).cuda().eval()
    x = torch.randn(2, 1, 96, 160, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        reference = network(x)  # float32: the unfused path
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fused = network(x)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(vmamba, "fused_ss2d", lambda *_: False)
                unfused = network(x)
    assert fused.dtype == torch.bfloat16
    # the fused kernels sum in fp32 and round once: no further from float32 than the unfused bf16 path
    assert relative_error(fused.float(), reference) < max(1.5 * relative_error(unfused.float(), reference), 1e-2)


if __name__ == "__main__":
    print(json.dumps(_interpreted_report()))
