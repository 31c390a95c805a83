"""VMamba's SS2D around its selective scan as two Triton kernels (CUDA half-precision inference), in place
of the eager path's permute, convolution, SiLU, flips, transposes, sums, LayerNorm and gate.

1. ``_conv_kernel``: depthwise 3x3 convolution + bias + SiLU read straight from ``in_proj``'s channels-last
   output and written as the official cross-scan (B, 4, D, L): row-major, column-major and both reversed.
   Programs for the reversed sequences compute mirrored pixels, so every store is ascending (vectorised).
2. ``SS2D.scan``: x_proj, dt_proj and the selective scan, as in the eager path (mamba_ssm's kernel when
   installed, else the project's Triton scan).
3. ``_merge_kernel``: the four scans summed back in pixel order, LayerNorm over channels, times SiLU(z),
   written channels-last for ``out_proj``; per-pixel statistics combined over channel blocks (Chan's
   formula). Sums, statistics and the gate in fp32, rounded once.

Importing this module imports triton.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .scan.triton_scan import _interpreting

CONV_TILE = (16, 16, 32)  # pixels (rows, columns) x channels
MERGE_TILE = (8, 8, 64)


@triton.jit
def _conv_kernel(x_ptr, x_sb, x_sh, x_sw, weight_ptr, bias_ptr, xs_ptr, dim, height, width,
                 TH: tl.constexpr, TW: tl.constexpr, CB: tl.constexpr):
    tiles_w = tl.cdiv(width, TW)
    rows = (tl.program_id(0) // tiles_w) * TH + tl.arange(0, TH)
    cols = (tl.program_id(0) % tiles_w) * TW + tl.arange(0, TW)
    channels = tl.program_id(1) * CB + tl.arange(0, CB)
    batch = (tl.program_id(2) // 2).to(tl.int64)
    mirrored = tl.program_id(2) % 2  # 1: the reversed sequences, for the pixels mirrored through the centre
    src_rows = tl.where(mirrored == 1, height - 1 - rows, rows)
    src_cols = tl.where(mirrored == 1, width - 1 - cols, cols)
    channel_ok = channels < dim
    acc = tl.zeros([TH, TW, CB], dtype=tl.float32)
    for dh in tl.static_range(3):
        for dw in tl.static_range(3):
            r = src_rows + (dh - 1)
            c = src_cols + (dw - 1)
            ok = (((r >= 0) & (r < height))[:, None, None] & ((c >= 0) & (c < width))[None, :, None]
                  & channel_ok[None, None, :])
            x = tl.load(x_ptr + batch * x_sb + r[:, None, None] * x_sh + c[None, :, None] * x_sw
                        + channels[None, None, :], mask=ok, other=0.0).to(tl.float32)
            tap = tl.load(weight_ptr + channels * 9 + (dh * 3 + dw), mask=channel_ok, other=0.0).to(tl.float32)
            acc += x * tap[None, None, :]
    acc += tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)[None, None, :]
    acc = (acc * tl.sigmoid(acc)).to(xs_ptr.dtype.element_ty)
    ok = (rows < height)[:, None, None] & (cols < width)[None, :, None] & channel_ok[None, None, :]
    length = height * width
    # reversed row-major index of the mirrored pixel = row-major index of (rows, cols); likewise columns
    planes = xs_ptr + ((batch * 4 + 2 * mirrored) * dim + channels[None, None, :]) * length
    tl.store(planes + rows[:, None, None] * width + cols[None, :, None], acc, mask=ok)
    tl.store(planes + dim * length + cols[None, :, None] * height + rows[:, None, None], acc, mask=ok)


@triton.jit
def _gathered(ys_ptr, rows, cols, channels, ok, dim, height, width, length):
    """sum over the four directions of ys (4, D, L) at pixels (rows, cols) x channels, fp32."""
    plane = channels[None, None, :] * length
    row_major = rows[:, None, None] * width + cols[None, :, None]
    col_major = cols[None, :, None] * height + rows[:, None, None]
    v = tl.load(ys_ptr + plane + row_major, mask=ok, other=0.0).to(tl.float32)
    v += tl.load(ys_ptr + dim * length + plane + col_major, mask=ok, other=0.0).to(tl.float32)
    v += tl.load(ys_ptr + 2 * dim * length + plane + (length - 1 - row_major), mask=ok, other=0.0).to(tl.float32)
    v += tl.load(ys_ptr + 3 * dim * length + plane + (length - 1 - col_major), mask=ok, other=0.0).to(tl.float32)
    return v


@triton.jit
def _merge_kernel(ys_ptr, z_ptr, z_sb, z_sh, z_sw, weight_ptr, bias_ptr, y_ptr, dim, height, width, eps,
                  TH: tl.constexpr, TW: tl.constexpr, CB: tl.constexpr):
    tiles_w = tl.cdiv(width, TW)
    rows = (tl.program_id(0) // tiles_w) * TH + tl.arange(0, TH)
    cols = (tl.program_id(0) % tiles_w) * TW + tl.arange(0, TW)
    batch = tl.program_id(1).to(tl.int64)
    length = height * width
    pixel_ok = (rows < height)[:, None, None] & (cols < width)[None, :, None]
    ys = ys_ptr + batch * 4 * dim * length
    count = 0.0
    mean = tl.zeros([TH, TW], dtype=tl.float32)
    m2 = tl.zeros([TH, TW], dtype=tl.float32)
    for start in range(0, dim, CB):  # per-pixel mean and variance over channels
        channels = start + tl.arange(0, CB)
        ok = pixel_ok & (channels < dim)[None, None, :]
        v = _gathered(ys, rows, cols, channels, ok, dim, height, width, length)
        block_count = tl.minimum(dim - start, CB).to(tl.float32)
        block_mean = tl.sum(v, axis=2) / block_count
        block_m2 = tl.sum(tl.where(ok, (v - block_mean[:, :, None]) * (v - block_mean[:, :, None]), 0.0), axis=2)
        total = count + block_count
        delta = block_mean - mean
        mean += delta * (block_count / total)
        m2 += block_m2 + delta * delta * (count * block_count / total)
        count = total
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    pixels = (batch * height + rows[:, None, None]) * width + cols[None, :, None]
    for start in range(0, dim, CB):
        channels = start + tl.arange(0, CB)
        channel_ok = channels < dim
        ok = pixel_ok & channel_ok[None, None, :]
        v = _gathered(ys, rows, cols, channels, ok, dim, height, width, length)
        gamma = tl.load(weight_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
        beta = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
        y = (v - mean[:, :, None]) * rstd[:, :, None] * gamma[None, None, :] + beta[None, None, :]
        z = tl.load(z_ptr + batch * z_sb + rows[:, None, None] * z_sh + cols[None, :, None] * z_sw
                    + channels[None, None, :], mask=ok, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
        tl.store(y_ptr + pixels * dim + channels[None, None, :], y.to(y_ptr.dtype.element_ty), mask=ok)


def ss2d_scan_merge(module, xz: torch.Tensor) -> torch.Tensor:
    """SS2D from ``in_proj``'s output ``xz`` (B, H, W, 2 D) to ``out_norm(scans) * silu(z)`` (B, H, W, D),
    in ``xz``'s dtype. ``module`` is an ``SS2D`` with a 3x3 depthwise convolution."""
    if xz.device.type != "cuda" and not _interpreting():
        raise RuntimeError("The Triton SS2D needs CUDA tensors")
    b, height, width, _ = xz.shape
    dim = module.d_inner
    x, z = xz[..., :dim], xz[..., dim:]
    if x.stride(3) != 1:
        raise ValueError("in_proj's output must be channels-last")
    xs = torch.empty((b, 4, dim, height * width), dtype=xz.dtype, device=xz.device)
    conv, norm = module.conv2d, module.out_norm
    with torch.cuda.device(xz.device) if xz.is_cuda else contextlib.nullcontext():
        th, tw, cb = CONV_TILE
        grid = (triton.cdiv(height, th) * triton.cdiv(width, tw), triton.cdiv(dim, cb), 2 * b)
        _conv_kernel[grid](x, x.stride(0), x.stride(1), x.stride(2), conv.weight.reshape(dim, 9), conv.bias, xs,
                           dim, height, width, TH=th, TW=tw, CB=cb, num_warps=4)
        ys = module.scan(xs).contiguous()  # the PyTorch scan returns padded rows
        out = torch.empty((b, height, width, dim), dtype=xz.dtype, device=xz.device)
        th, tw, cb = MERGE_TILE
        _merge_kernel[(triton.cdiv(height, th) * triton.cdiv(width, tw), b)](
            ys, z, z.stride(0), z.stride(1), z.stride(2), norm.weight, norm.bias, out, dim, height, width, norm.eps,
            TH=th, TW=tw, CB=cb, num_warps=4)
    return out
