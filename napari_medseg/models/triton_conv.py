"""Convolutions of a one-channel image as a Triton kernel (CUDA inference), written channels-last.

cuDNN has no tensor-core kernel for one input channel (its channels-last kernels want multiples of 8) and
falls back to slow generic ones for Swin-UMamba's stem (7x7, stride 2) and its full-resolution encoder
block (3x3 and 1x1). The work is tiny (K*K multiply-adds per output): one kernel reads the image and
writes the output map once. fp32 accumulation; the output in the autocast type (else the input's).

Importing this module imports triton.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .scan.triton_scan import _interpreting

BLOCK_P = 128  # output pixels per program
BLOCK_C = 64  # output channels per program


@triton.jit
def _conv_kernel(x_ptr, x_sb, x_sh, x_sw, w_ptr, bias_ptr, out_ptr, height, width, out_h, out_w, channels,
                 stride, padding, K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    batch = tl.program_id(2).to(tl.int64)
    pixel_ok = pixels < out_h * out_w
    chan_ok = chans < channels
    top = (pixels // out_w) * stride - padding
    left = (pixels % out_w) * stride - padding
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            r = top + i
            c = left + j
            ok = pixel_ok & (r >= 0) & (r < height) & (c >= 0) & (c < width)
            v = tl.load(x_ptr + batch * x_sb + r * x_sh + c * x_sw, mask=ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + chans * (K * K) + (i * K + j), mask=chan_ok, other=0.0).to(tl.float32)
            acc += v[:, None] * w[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + (batch * out_h * out_w + pixels[:, None]) * channels + chans[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=pixel_ok[:, None] & chan_ok[None, :])


def single_channel_conv2d(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for x (N, 1, H, W) and a square, ungrouped, undilated ``conv``; channels-last output."""
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError("The Triton convolution needs CUDA tensors")
    k, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    if (x.shape[1] != 1 or conv.kernel_size != (k, k) or conv.stride != (stride, stride) or conv.groups != 1
            or conv.padding != (padding, padding) or conv.dilation != (1, 1)):
        raise ValueError("single_channel_conv2d takes one-channel input and a square, plain convolution")
    n, _, height, width = x.shape
    out_h, out_w = (height + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1
    autocast = x.is_cuda and torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda") if autocast else x.dtype
    channels = conv.out_channels
    out = torch.empty((n, out_h, out_w, channels), dtype=dtype, device=x.device)
    weight = conv.weight.reshape(channels, k * k)
    bias = conv.bias if conv.bias is not None else weight
    grid = (triton.cdiv(out_h * out_w, BLOCK_P), triton.cdiv(channels, BLOCK_C), n)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _conv_kernel[grid](x, x.stride(0), x.stride(2), x.stride(3), weight, bias, out, height, width, out_h, out_w,
                           channels, stride, padding, K=k, HAS_BIAS=conv.bias is not None, BLOCK_P=BLOCK_P,
                           BLOCK_C=BLOCK_C, num_warps=4)
    return out.permute(0, 3, 1, 2)
