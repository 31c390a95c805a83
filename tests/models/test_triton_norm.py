"""The fused InstanceNorm + residual + LeakyReLU kernels against PyTorch's modules.

On CPU the kernels run in Triton's interpreter, in one subprocess that executes this file as a script
(``run_interpreted``: Triton decides at import time whether it interprets) and reports the errors as JSON.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from test_scan import relative_error

TOLERANCE = 1e-5


def _expected(x, residual, norm_residual):
    y = F.instance_norm(x)
    if residual is not None:
        y = y + (F.instance_norm(residual) if norm_residual else residual)
    return F.leaky_relu(y, 0.01)


def _interpreted_report() -> dict:
    """Run in the subprocess (TRITON_INTERPRET=1)."""
    from napari_medseg.models import swin_umamba, triton_norm

    triton_norm.STATS_BLOCK = 64  # planes of several blocks, the last one partial
    triton_norm.APPLY_BLOCK = 128
    g = torch.Generator().manual_seed(0)
    x = 3 + 2 * torch.randn(2, 3, 9, 13, generator=g)  # an offset mean: the variance must not cancel
    residual = torch.randn(2, 3, 9, 13, generator=g)
    report = {}
    for name, (r, norm_residual) in {"alone": (None, True), "normed-residual": (residual, True),
                                     "identity-residual": (residual, False)}.items():
        got = triton_norm.instance_norm_leaky_relu(x, r, norm_residual=norm_residual)
        report[name] = relative_error(got, _expected(x, r, norm_residual))
    triton_norm.STATS_TILE = triton_norm.APPLY_TILE = (16, 32)  # several splits and channel blocks
    triton_norm.SPLIT_ROWS = 32
    wide = (3 + 2 * torch.randn(2, 80, 9, 13, generator=g)).contiguous(memory_format=torch.channels_last)
    wide_residual = torch.randn(2, 80, 9, 13, generator=g).contiguous(memory_format=torch.channels_last)
    for name, (r, norm_residual) in {"cl-alone": (None, True), "cl-normed-residual": (wide_residual, True),
                                     "cl-identity-residual": (wide_residual, False)}.items():
        got = triton_norm.instance_norm_leaky_relu(wide, r, norm_residual=norm_residual)
        report[name] = relative_error(got, _expected(wide, r, norm_residual))
        report[name + "-layout"] = got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    weight, bias = torch.randn(80, generator=g), torch.randn(80, generator=g)
    got = triton_norm.instance_norm_leaky_relu(wide, slope=1.0, weight=weight, bias=bias)
    report["cl-affine"] = relative_error(got, F.instance_norm(wide, weight=weight, bias=bias))
    joined = torch.zeros(2, 9, 13, 160).permute(0, 3, 1, 2)  # written into a concatenation's second half
    triton_norm.instance_norm_leaky_relu(wide, wide_residual, out=joined[:, 80:])
    report["cl-out"] = max(relative_error(joined[:, 80:], _expected(wide, wide_residual, True)),
                           float(joined[:, :80].abs().max()))  # the first half untouched
    triton_norm.copy_channels_last(joined[:, :80], wide_residual)
    report["cl-copy"] = max(relative_error(joined[:, :80], wide_residual),
                            relative_error(joined[:, 80:], _expected(wide, wide_residual, True)))
    triton_norm.LAYER_NORM_ELEMENTS = 256  # several rows per program, the last program partial
    for name, shape in {"layer-norm-96": (2, 5, 7, 96), "layer-norm-130": (3, 1, 130)}.items():
        rows = 3 + torch.randn(*shape, generator=g)
        weight, bias = torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)
        report[name] = relative_error(triton_norm.layer_norm(rows, weight, bias, 1e-5),
                                      F.layer_norm(rows, shape[-1:], weight, bias, 1e-5))
    volume = torch.randn(1, 2, 5, 6, 7, generator=g)  # 3-D maps
    report["volume"] = relative_error(triton_norm.instance_norm_leaky_relu(volume), _expected(volume, None, True))
    swin_umamba.fused_norms = lambda *_: True  # the ResBlocks' fused path on the CPU
    for channels in ((4, 6), (6, 6)):  # with and without the 1x1 convolution on the residual
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            block = swin_umamba.ResBlock(*channels).eval()
            feature = torch.randn(2, channels[0], 10, 7).contiguous(memory_format=layout)
            with torch.no_grad():
                fused = block(feature)
                swin_umamba.fused_norms = lambda *_: False
                eager = block(feature)
                swin_umamba.fused_norms = lambda *_: True
            suffix = "-cl" if layout == torch.channels_last else ""
            report[f"resblock-{channels[0]}-{channels[1]}{suffix}"] = relative_error(fused, eager)
    torch.manual_seed(0)  # the decoder's concatenation written in place by the skip block
    up, skip_block = swin_umamba.UpBlock(12, 6).eval(), swin_umamba.BasicBlock(4, 6).eval()
    below = torch.randn(2, 12, 5, 4).contiguous(memory_format=torch.channels_last)
    skip_input = torch.randn(2, 4, 10, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        joined = up.joined(below, skip_block, skip_input)
        report["upblock-joined"] = relative_error(joined, up(below, skip_block(skip_input)))
    return report


@pytest.mark.parametrize("name", ["alone", "normed-residual", "identity-residual", "volume", "resblock-4-6",
                                  "resblock-6-6", "cl-alone", "cl-normed-residual", "cl-identity-residual",
                                  "cl-affine", "resblock-4-6-cl", "resblock-6-6-cl", "cl-out", "cl-copy",
                                  "layer-norm-96", "layer-norm-130", "upblock-joined"])
def test_interpreted_kernels_match_pytorch(interpreted, name):
    assert interpreted[name] < TOLERANCE, interpreted


@pytest.mark.parametrize("name", ["cl-alone", "cl-normed-residual", "cl-identity-residual"])
def test_channels_last_maps_stay_channels_last(interpreted, name):
    assert interpreted[name + "-layout"] is True


@pytest.mark.gpu
def test_cuda_resblock_fused_matches_eager():
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from napari_medseg.models import swin_umamba

    torch.manual_seed(0)
    block = swin_umamba.ResBlock(32, 48).cuda().eval()
    feature = torch.randn(2, 32, 64, 80, device="cuda")
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        assert swin_umamba.fused_norms(feature, block.conv1.conv.weight)
        fused = block(feature)
    eager = block(feature)  # gradients enabled: the eager path
    assert relative_error(fused, eager) < TOLERANCE
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        low = block(feature)
    assert low.dtype == torch.bfloat16 and relative_error(low.float(), eager) < 2e-2


if __name__ == "__main__":
    print(json.dumps(_interpreted_report()))
