"""The one-channel convolution kernel against ``torch.nn.functional.conv2d`` (under Triton's interpreter on
CPU, in a subprocess: ``run_interpreted``)."""
from __future__ import annotations

import json

import pytest
import torch

from test_scan import relative_error

# (kernel, stride, padding, bias, out channels): Swin-UMamba's stem, its full-resolution 3x3 and 1x1
CASES = {"stem-7x7-stride-2": (7, 2, 3, True, 48), "3x3": (3, 1, 1, False, 70), "1x1": (1, 1, 0, False, 5)}


def _interpreted_report() -> dict:
    from napari_medseg.models import triton_conv

    triton_conv.BLOCK_P, triton_conv.BLOCK_C = 32, 32  # several pixel and channel blocks, the last partial
    report = {}
    for name, (k, stride, padding, bias, channels) in CASES.items():
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(1, channels, k, stride=stride, padding=padding, bias=bias)
        x = torch.randn(2, 1, 13, 10)
        with torch.no_grad():
            got = triton_conv.single_channel_conv2d(x, conv)
            expected = conv(x)
        report[name] = relative_error(got, expected)
        report[name + "-layout"] = got.shape == expected.shape and got.permute(0, 2, 3, 1).is_contiguous()
    triton_conv.HEAD_PIXELS, triton_conv.HEAD_CHANNELS = 32, 16  # several pixel blocks and channel steps
    head = torch.nn.Conv2d(40, 14, 1)
    x = torch.randn(2, 40, 9, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = triton_conv.head_conv2d(x, head)
        report["head"] = relative_error(got, head(x))
    report["head-layout"] = got.is_contiguous()  # channels-first logits
    return report


@pytest.mark.parametrize("name", [*CASES, "head"])
def test_interpreted_kernel_matches_conv2d(interpreted, name):
    assert interpreted[name] < 1e-5, interpreted
    assert interpreted[name + "-layout"] is True


if __name__ == "__main__":
    print(json.dumps(_interpreted_report()))
