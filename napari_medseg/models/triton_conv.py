"""Convolutions cuDNN is slow at, as Triton kernels (CUDA inference) on channels-last maps.

Convolutions of a one-channel image, written channels-last:

cuDNN has no tensor-core kernel for one input channel (its channels-last kernels want multiples of 8) and
falls back to slow generic ones for Swin-UMamba's stem (7x7, stride 2) and its full-resolution encoder
block (3x3 and 1x1). The work is tiny (K*K multiply-adds per output): one kernel reads the image and
writes the output map once. fp32 accumulation; the output in the autocast type (else the input's).

The segmentation head (1x1 with bias, few output channels) from a channels-last map to channels-first
logits: cuDNN's kernel for few output channels plus the layout copy took 5x longer than this one kernel.

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
HEAD_PIXELS, HEAD_CHANNELS = 64, 64  # the head kernel's pixels per program and input channels per step


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


@triton.jit
def _head_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, spatial, chans, classes, BLOCK_P: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    batch = tl.program_id(1).to(tl.int64)
    heads = tl.arange(0, BLOCK_K)
    pixel_ok = pixels < spatial
    head_ok = heads < classes
    acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float32)
    for start in range(0, chans, BLOCK_C):
        cs = start + tl.arange(0, BLOCK_C)
        x = tl.load(x_ptr + (batch * spatial + pixels[:, None]) * chans + cs[None, :],
                    mask=pixel_ok[:, None] & (cs < chans)[None, :], other=0.0)
        w = tl.load(w_ptr + heads[None, :] * chans + cs[:, None], mask=(cs < chans)[:, None] & head_ok[None, :],
                    other=0.0)
        acc = tl.dot(x, w, acc)
    acc += tl.load(bias_ptr + heads, mask=head_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + (batch * classes + heads[None, :]) * spatial + pixels[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=pixel_ok[:, None] & head_ok[None, :])


def head_conv2d(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` in x's dtype for a channels-last ``x`` and a 1x1 ``conv`` with bias (the segmentation
    head), written channels-first (N, classes, H, W); the bias is added in fp32."""
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError("The Triton convolution needs CUDA tensors")
    if not x.permute(0, 2, 3, 1).is_contiguous():
        raise ValueError("head_conv2d takes a dense channels-last map")
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.bias is None \
            or conv.groups != 1:
        raise ValueError("head_conv2d takes an ungrouped 1x1 convolution with bias")
    n, chans, height, width = x.shape
    classes = conv.out_channels
    out = torch.empty((n, classes, height, width), dtype=x.dtype, device=x.device)
    weight = conv.weight.reshape(classes, chans).to(x.dtype)
    block_c = min(HEAD_CHANNELS, max(16, triton.next_power_of_2(chans)))  # tl.dot wants 16 at least
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _head_kernel[(triton.cdiv(height * width, HEAD_PIXELS), n)](
            x, weight, conv.bias, out, height * width, chans, classes, BLOCK_P=HEAD_PIXELS, BLOCK_C=block_c,
            BLOCK_K=max(16, triton.next_power_of_2(classes)), num_warps=4)
    return out
