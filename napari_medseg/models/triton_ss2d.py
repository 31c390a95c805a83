"""VMamba's SS2D around its selective scan as two Triton kernels (CUDA half-precision inference), in place
of the eager path's permute, convolution, SiLU, flips, transposes, sums, LayerNorm and gate.

1. ``_conv_kernel``: depthwise 3x3 convolution + bias + SiLU read straight from ``in_proj``'s channels-last
   output and written as the official cross-scan (B, 4, D, L): row-major, column-major and both reversed.
   The reversed sequences get the tile flipped in registers, stored at the mirrored tile, so every store
   ascends (vectorised).
2. ``SS2D.scan``: x_proj, dt_proj and the selective scan, as in the eager path (mamba_ssm's kernel when
   installed, else the project's Triton scan).
3. ``_merge_kernel``: the four scans summed back in pixel order (the reversed ones read at the mirrored tile
   and flipped), LayerNorm over channels, times SiLU(z), written channels-last for ``out_proj``. A first pass
   writes the fp32 sum rounded to the output type (the official half-precision path rounds it too) and its
   per-pixel statistics (channel blocks combined by Chan's formula); a second pass normalises it in place,
   so the four scans are read once. Statistics and the gate in fp32.

Importing this module imports triton.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .scan.triton_scan import _interpreting

# tiles: pixels (rows, columns) x channels, and warps; measured best on an H200 over a Swin-UMamba forward
CONV_TILE, CONV_WARPS = (16, 16, 32), 8
MERGE_TILE, MERGE_WARPS = (8, 8, 128), 8


@triton.jit
def _tile_origin(width, TH: tl.constexpr, TW: tl.constexpr):
    """(first row, first column) of this program's TH x TW pixel tile (tiles row-major over program axis 0)."""
    tiles_w = tl.cdiv(width, TW)
    return (tl.program_id(0) // tiles_w) * TH, (tl.program_id(0) % tiles_w) * TW


@triton.jit
def _mirrored_tile(row0, col0, height, width, TH: tl.constexpr, TW: tl.constexpr):
    """Rows and columns, ascending, of the tile mirrored through the map's centre: position k holds
    height - 1 - (row0 + TH - 1 - k), i.e. the mirror of the tile's row TH - 1 - k (likewise columns).
    Negative where the tile overhangs the map."""
    return height - TH - row0 + tl.arange(0, TH), width - TW - col0 + tl.arange(0, TW)


@triton.jit
def _conv_kernel(x_ptr, x_sb, x_sh, x_sw, weight_ptr, bias_ptr, xs_ptr, dim, height, width,
                 TH: tl.constexpr, TW: tl.constexpr, CB: tl.constexpr):
    row0, col0 = _tile_origin(width, TH, TW)
    rows = row0 + tl.arange(0, TH)
    cols = col0 + tl.arange(0, TW)
    channels = tl.program_id(1) * CB + tl.arange(0, CB)
    batch = tl.program_id(2).to(tl.int64)
    channel_ok = channels < dim
    acc = tl.zeros([TH, TW, CB], dtype=tl.float32)
    for dh in tl.static_range(3):
        for dw in tl.static_range(3):
            r = rows + (dh - 1)
            c = cols + (dw - 1)
            ok = (((r >= 0) & (r < height))[:, None, None] & ((c >= 0) & (c < width))[None, :, None]
                  & channel_ok[None, None, :])
            x = tl.load(x_ptr + batch * x_sb + r[:, None, None] * x_sh + c[None, :, None] * x_sw
                        + channels[None, None, :], mask=ok, other=0.0).to(tl.float32)
            tap = tl.load(weight_ptr + channels * 9 + (dh * 3 + dw), mask=channel_ok, other=0.0).to(tl.float32)
            acc += x * tap[None, None, :]
    acc += tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)[None, None, :]
    acc = (acc * tl.sigmoid(acc)).to(xs_ptr.dtype.element_ty)
    length = height * width
    planes = xs_ptr + (batch * 4 * dim + channels[None, None, :]) * length
    ok = (rows < height)[:, None, None] & (cols < width)[None, :, None] & channel_ok[None, None, :]
    tl.store(planes + rows[:, None, None] * width + cols[None, :, None], acc, mask=ok)
    tl.store(planes + dim * length + cols[None, :, None] * height + rows[:, None, None], acc, mask=ok)
    # the reversed sequences hold pixel (r, c) at the row-/column-major index of (H-1-r, W-1-c): the tile,
    # flipped, goes to the mirrored tile with ascending addresses (see _gathered)
    m_rows, m_cols = _mirrored_tile(row0, col0, height, width, TH, TW)
    m_ok = (m_rows >= 0)[:, None, None] & (m_cols >= 0)[None, :, None] & channel_ok[None, None, :]
    flipped = tl.flip(tl.flip(acc, 0), 1)
    tl.store(planes + 2 * dim * length + m_rows[:, None, None] * width + m_cols[None, :, None], flipped, mask=m_ok)
    tl.store(planes + 3 * dim * length + m_cols[None, :, None] * height + m_rows[:, None, None], flipped, mask=m_ok)


@triton.jit
def _gathered(ys_ptr, row0, col0, channels, dim, height, width, TH: tl.constexpr, TW: tl.constexpr):
    """sum over the four directions of ys (4, D, L) at the TH x TW pixels from (row0, col0) x channels, fp32.
    The reversed sequences are read at the mirrored tile, whose addresses ascend, and flipped back in
    registers."""
    rows = row0 + tl.arange(0, TH)
    cols = col0 + tl.arange(0, TW)
    length = height * width
    plane = channels[None, None, :] * length
    channel_ok = (channels < dim)[None, None, :]
    ok = (rows < height)[:, None, None] & (cols < width)[None, :, None] & channel_ok
    v = tl.load(ys_ptr + plane + rows[:, None, None] * width + cols[None, :, None], mask=ok, other=0.0).to(tl.float32)
    v += tl.load(ys_ptr + dim * length + plane + cols[None, :, None] * height + rows[:, None, None], mask=ok,
                 other=0.0).to(tl.float32)
    m_rows, m_cols = _mirrored_tile(row0, col0, height, width, TH, TW)
    m_ok = (m_rows >= 0)[:, None, None] & (m_cols >= 0)[None, :, None] & channel_ok
    reversed_sum = tl.load(ys_ptr + 2 * dim * length + plane + m_rows[:, None, None] * width + m_cols[None, :, None],
                           mask=m_ok, other=0.0).to(tl.float32)
    reversed_sum += tl.load(ys_ptr + 3 * dim * length + plane + m_cols[None, :, None] * height
                            + m_rows[:, None, None], mask=m_ok, other=0.0).to(tl.float32)
    return v + tl.flip(tl.flip(reversed_sum, 0), 1)


@triton.jit
def _merge_kernel(ys_ptr, z_ptr, z_sb, z_sh, z_sw, weight_ptr, bias_ptr, y_ptr, dim, height, width, eps,
                  TH: tl.constexpr, TW: tl.constexpr, CB: tl.constexpr):
    row0, col0 = _tile_origin(width, TH, TW)
    rows = row0 + tl.arange(0, TH)
    cols = col0 + tl.arange(0, TW)
    batch = tl.program_id(1).to(tl.int64)
    pixel_ok = (rows < height)[:, None, None] & (cols < width)[None, :, None]
    ys = ys_ptr + batch * 4 * dim * height * width
    out = y_ptr + ((batch * height + rows[:, None, None]) * width + cols[None, :, None]) * dim
    count = 0.0
    mean = tl.zeros([TH, TW], dtype=tl.float32)
    m2 = tl.zeros([TH, TW], dtype=tl.float32)
    for start in range(0, dim, CB):  # the sum over directions, rounded to the output type, and its statistics
        channels = start + tl.arange(0, CB)
        ok = pixel_ok & (channels < dim)[None, None, :]
        v = _gathered(ys, row0, col0, channels, dim, height, width, TH, TW).to(y_ptr.dtype.element_ty)
        tl.store(out + channels[None, None, :], v, mask=ok)
        v = v.to(tl.float32)
        block_count = tl.minimum(dim - start, CB).to(tl.float32)
        block_mean = tl.sum(v, axis=2) / block_count
        block_m2 = tl.sum(tl.where(ok, (v - block_mean[:, :, None]) * (v - block_mean[:, :, None]), 0.0), axis=2)
        total = count + block_count
        delta = block_mean - mean
        mean += delta * (block_count / total)
        m2 += block_m2 + delta * delta * (count * block_count / total)
        count = total
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    tl.debug_barrier()  # the sums written above are read back by other threads of this program
    for start in range(0, dim, CB):  # LayerNorm and gate, in place
        channels = start + tl.arange(0, CB)
        channel_ok = channels < dim
        ok = pixel_ok & channel_ok[None, None, :]
        v = tl.load(out + channels[None, None, :], mask=ok, other=0.0).to(tl.float32)
        gamma = tl.load(weight_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
        beta = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
        y = (v - mean[:, :, None]) * rstd[:, :, None] * gamma[None, None, :] + beta[None, None, :]
        z = tl.load(z_ptr + batch * z_sb + rows[:, None, None] * z_sh + cols[None, :, None] * z_sw
                    + channels[None, None, :], mask=ok, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
        tl.store(out + channels[None, None, :], y.to(y_ptr.dtype.element_ty), mask=ok)


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
        grid = (triton.cdiv(height, th) * triton.cdiv(width, tw), triton.cdiv(dim, cb), b)
        _conv_kernel[grid](x, x.stride(0), x.stride(1), x.stride(2), conv.weight.reshape(dim, 9), conv.bias, xs,
                           dim, height, width, TH=th, TW=tw, CB=cb, num_warps=CONV_WARPS)
        ys = module.scan(xs).contiguous()  # the PyTorch scan returns padded rows
        out = torch.empty((b, height, width, dim), dtype=xz.dtype, device=xz.device)
        th, tw, cb = MERGE_TILE
        _merge_kernel[(triton.cdiv(height, th) * triton.cdiv(width, tw), b)](
            ys, z, z.stride(0), z.stride(1), z.stride(2), norm.weight, norm.bias, out, dim, height, width, norm.eps,
            TH=th, TW=tw, CB=cb, num_warps=MERGE_WARPS)
    return out
