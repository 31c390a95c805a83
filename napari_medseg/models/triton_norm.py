"""Instance normalisation fused with LeakyReLU and the residual sum of MONAI's ``UnetResBlock``, as Triton
kernels (CUDA inference).

Eager PyTorch spends five passes over a feature map on ``lrelu(norm(a) + norm(b))`` (statistics,
normalise, add, activate) plus two for ``lrelu(norm(a))``; here one kernel reads each map once for its
per-plane statistics (Welford-style: blocks combined by Chan's formula) and a second reads the maps again
and writes the activated sum. Affine-free InstanceNorm (biased variance), as ``nn.InstanceNorm2d``/``3d``
computes it in eval; statistics in fp32, the output in the input's dtype.

Channels-last maps (N, *spatial, C in memory: what cuDNN's half-precision convolutions read and write
without layout conversions) have kernels of their own: the statistics kernel sums tiles of positions x
channels over a share of the positions, a finalising kernel combines the shares per channel (Chan's
formula), and the apply kernel normalises; it also takes an affine weight and bias (the stem's norm),
and may write into a wider map (the decoder's concatenation), whose other half a copy kernel fills.

LayerNorm over the last dimension of half-precision rows (VMamba's), several rows per program.

Importing this module imports triton.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .scan.triton_scan import _interpreting

STATS_BLOCK = 4096
APPLY_BLOCK = 2048
# channels-last tiles (spatial positions, channels at most) and warps, measured best on an H200 over the maps of
# a Swin-UMamba forward (8 x 512^2): statistics at 2.3 TB/s, apply at 4 TB/s
STATS_TILE, STATS_WARPS = (128, 32), 8
APPLY_TILE, APPLY_WARPS = (32, 64), 2
LAYER_NORM_ELEMENTS, LAYER_NORM_WARPS = 1024, 2  # rows x channels (a power of two) per layer-norm program
SPLIT_ROWS = 1024  # spatial positions per statistics program at the least
PROGRAMS = 512  # statistics programs aimed at (splits are added until there are this many)


@triton.jit
def _plane_stats_kernel(x_ptr, mean_ptr, rstd_ptr, plane_size, eps, BLOCK: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    start = x_ptr + plane * plane_size
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for offset in range(0, plane_size, BLOCK):
        index = offset + tl.arange(0, BLOCK)
        ok = index < plane_size
        x = tl.load(start + index, mask=ok, other=0.0).to(tl.float32)
        block_count = tl.minimum(plane_size - offset, BLOCK).to(tl.float32)
        block_mean = tl.sum(x, axis=0) / block_count
        block_m2 = tl.sum(tl.where(ok, (x - block_mean) * (x - block_mean), 0.0), axis=0)
        total = count + block_count
        delta = block_mean - mean
        mean += delta * (block_count / total)
        m2 += block_m2 + delta * delta * (count * block_count / total)
        count = total
    tl.store(mean_ptr + plane, mean)
    tl.store(rstd_ptr + plane, 1.0 / tl.sqrt(m2 / count + eps))


@triton.jit
def _apply_kernel(x_ptr, x_mean_ptr, x_rstd_ptr, r_ptr, r_mean_ptr, r_rstd_ptr, out_ptr, numel, plane_size, slope,
                  HAS_RESIDUAL: tl.constexpr, NORM_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = index < numel
    plane = index // plane_size
    x = tl.load(x_ptr + index, mask=ok, other=0.0).to(tl.float32)
    y = (x - tl.load(x_mean_ptr + plane, mask=ok, other=0.0)) * tl.load(x_rstd_ptr + plane, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + index, mask=ok, other=0.0).to(tl.float32)
        if NORM_RESIDUAL:
            r = (r - tl.load(r_mean_ptr + plane, mask=ok, other=0.0)) * tl.load(r_rstd_ptr + plane, mask=ok, other=0.0)
        y += r
    y = tl.where(y >= 0.0, y, y * slope)
    tl.store(out_ptr + index, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _cl_stats_kernel(x_ptr, mean_ptr, m2_ptr, spatial, channels, split_rows, BLOCK_R: tl.constexpr,
                     BLOCK_C: tl.constexpr):
    """Mean and M2 per channel over one split of the positions: sums of (x - shift) and its square kept per
    thread and reduced once, the shift being the first tile's mean (so that nothing cancels)."""
    sample = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chans < channels
    start = tl.program_id(2) * split_rows
    stop = tl.minimum(start + split_rows, spatial)
    base = x_ptr + sample * spatial * channels + chans[None, :]
    rows = start + tl.arange(0, BLOCK_R)
    ok = (rows < stop)[:, None] & chan_ok[None, :]
    first = tl.load(base + rows[:, None] * channels, mask=ok, other=0.0).to(tl.float32)
    shift = tl.sum(first, axis=0) / tl.minimum(stop - start, BLOCK_R).to(tl.float32)
    d = tl.where(ok, first - shift[None, :], 0.0)
    total = d
    squares = d * d
    for offset in range(start + BLOCK_R, stop, BLOCK_R):
        rows = offset + tl.arange(0, BLOCK_R)
        ok = (rows < stop)[:, None] & chan_ok[None, :]
        d = tl.where(ok, tl.load(base + rows[:, None] * channels, mask=ok, other=0.0).to(tl.float32) - shift[None, :],
                     0.0)
        total += d
        squares += d * d
    count = (stop - start).to(tl.float32)
    mean_shifted = tl.sum(total, axis=0) / count
    m2 = tl.maximum(tl.sum(squares, axis=0) - mean_shifted * mean_shifted * count, 0.0)
    out = (sample * tl.num_programs(2) + tl.program_id(2)) * channels + chans
    tl.store(mean_ptr + out, shift + mean_shifted, mask=chan_ok)
    tl.store(m2_ptr + out, m2, mask=chan_ok)


@triton.jit
def _cl_finalize_kernel(part_mean_ptr, part_m2_ptr, mean_ptr, rstd_ptr, spatial, channels, splits, split_rows, eps,
                        BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """(mean, rstd) per channel of one sample from its splits' partial statistics."""
    sample = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chans < channels
    parts = tl.arange(0, BLOCK_S)
    ok = (parts < splits)[:, None] & chan_ok[None, :]
    index = (sample * splits + parts[:, None]) * channels + chans[None, :]
    part_mean = tl.load(part_mean_ptr + index, mask=ok, other=0.0)
    part_m2 = tl.load(part_m2_ptr + index, mask=ok, other=0.0)
    counts = tl.maximum(tl.minimum(spatial - parts * split_rows, split_rows), 0).to(tl.float32)[:, None]
    mean = tl.sum(counts * part_mean, axis=0) / spatial
    deviation = part_mean - mean[None, :]
    m2 = tl.sum(tl.where(ok, part_m2 + counts * deviation * deviation, 0.0), axis=0)
    tl.store(mean_ptr + sample * channels + chans, mean, mask=chan_ok)
    tl.store(rstd_ptr + sample * channels + chans, 1.0 / tl.sqrt(m2 / spatial + eps), mask=chan_ok)


@triton.jit
def _cl_apply_kernel(x_ptr, x_mean_ptr, x_rstd_ptr, r_ptr, r_mean_ptr, r_rstd_ptr, weight_ptr, bias_ptr, out_ptr,
                     spatial, channels, out_stride, slope, HAS_RESIDUAL: tl.constexpr, NORM_RESIDUAL: tl.constexpr,
                     AFFINE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    sample = tl.program_id(2).to(tl.int64)
    chan_ok = chans < channels
    ok = (rows < spatial)[:, None] & chan_ok[None, :]
    index = (sample * spatial + rows[:, None]) * channels + chans[None, :]
    stat = sample * channels + chans
    mean = tl.load(x_mean_ptr + stat, mask=chan_ok, other=0.0)
    rstd = tl.load(x_rstd_ptr + stat, mask=chan_ok, other=0.0)
    y = (tl.load(x_ptr + index, mask=ok, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
    if AFFINE:
        y = (y * tl.load(weight_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[None, :]
             + tl.load(bias_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[None, :])
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + index, mask=ok, other=0.0).to(tl.float32)
        if NORM_RESIDUAL:
            r_mean = tl.load(r_mean_ptr + stat, mask=chan_ok, other=0.0)
            r = (r - r_mean[None, :]) * tl.load(r_rstd_ptr + stat, mask=chan_ok, other=0.0)[None, :]
        y += r
    y = tl.where(y >= 0.0, y, y * slope)
    out = (sample * spatial + rows[:, None]) * out_stride + chans[None, :]  # out may hold more channels per pixel
    tl.store(out_ptr + out, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _layer_norm_kernel(x_ptr, weight_ptr, bias_ptr, out_ptr, rows, chans, eps, BLOCK_R: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    """LayerNorm over the last dimension of BLOCK_R rows at once (PyTorch's kernel takes one row per block
    of threads, slow for rows of ~100 channels); statistics in fp32 from the row held in registers."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    chan = tl.arange(0, BLOCK_C)
    chan_ok = chan < chans
    ok = (row < rows)[:, None] & chan_ok[None, :]
    index = row[:, None] * chans + chan[None, :]
    x = tl.load(x_ptr + index, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / chans
    centred = tl.where(ok, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / chans + eps)
    weight = tl.load(weight_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + chan, mask=chan_ok, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * weight[None, :] + bias[None, :]
    tl.store(out_ptr + index, y.to(out_ptr.dtype.element_ty), mask=ok)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.layer_norm`` over x's last dimension, in x's dtype (the parameters are cast to it, as autocast
    casts a Linear's weight)."""
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError("The Triton layer norm needs CUDA tensors")
    chans = x.shape[-1]
    x = x.contiguous()
    out = torch.empty_like(x)
    block_c = triton.next_power_of_2(chans)
    block_r = max(1, LAYER_NORM_ELEMENTS // block_c)
    rows = x.numel() // chans
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _layer_norm_kernel[(triton.cdiv(rows, block_r),)](
            x, weight.to(x.dtype), bias.to(x.dtype), out, rows, chans, eps, BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=LAYER_NORM_WARPS)
    return out


@triton.jit
def _cl_copy_kernel(src_ptr, dst_ptr, pixels, chans, dst_stride, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rows < pixels)[:, None] & (cs < chans)[None, :]
    v = tl.load(src_ptr + rows[:, None] * chans + cs[None, :], mask=ok)
    tl.store(dst_ptr + rows[:, None] * dst_stride + cs[None, :], v, mask=ok)


def copy_channels_last(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` for a dense channels-last ``src`` (a transposed convolution's output under
    channels-last inference) and a channels-last view ``dst`` whose pixels
    hold more channels (``cat[:, :c]``): PyTorch's strided copy ran at a quarter of the bandwidth."""
    if src.device.type != "cuda" and not _interpreting():
        raise RuntimeError("The Triton copy needs CUDA tensors")
    _check_out(dst, src)
    pixels, chans = src.numel() // src.shape[1], src.shape[1]
    rows, block_c = APPLY_TILE[0], _channel_block(chans, APPLY_TILE)
    with torch.cuda.device(src.device) if src.is_cuda else contextlib.nullcontext():
        _cl_copy_kernel[(triton.cdiv(pixels, rows), triton.cdiv(chans, block_c))](
            src, dst, pixels, chans, dst.stride(3), BLOCK_R=rows, BLOCK_C=block_c, num_warps=APPLY_WARPS)


def _check_out(out: torch.Tensor, x: torch.Tensor) -> None:
    if not x.movedim(1, -1).is_contiguous():
        raise ValueError("expected a dense channels-last map")
    if (out.shape != x.shape or out.dtype != x.dtype or out.stride(1) != 1
            or out.stride()[2:] != (x.shape[3] * out.stride(3), out.stride(3))
            or out.stride(0) != x[0, 0].numel() * out.stride(3)):
        raise ValueError("out must be a channels-last map of x's shape and dtype (its pixels may hold more channels)")


def channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` (N, C, *spatial) is dense with its channels innermost (and is not also plainly
    contiguous, as maps of one channel or one pixel are)."""
    return not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _channel_block(chans: int, tile: tuple[int, int]) -> int:
    return min(tile[1], triton.next_power_of_2(chans))


def _cl_splits(x: torch.Tensor) -> tuple[int, int, int]:
    """(channel block, splits, positions per split) of the channels-last statistics grid."""
    samples, chans, spatial = x.shape[0], x.shape[1], x[0, 0].numel()
    block_c = _channel_block(chans, STATS_TILE)
    programs = samples * triton.cdiv(chans, block_c)
    splits = max(1, min(triton.cdiv(spatial, SPLIT_ROWS), triton.cdiv(PROGRAMS, programs)))
    split_rows = triton.cdiv(spatial, splits)
    return block_c, triton.cdiv(spatial, split_rows), split_rows


def _cl_stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) mean and 1/std of a channels-last map, (N, C) fp32 each."""
    samples, chans, spatial = x.shape[0], x.shape[1], x[0, 0].numel()
    block_c, splits, split_rows = _cl_splits(x)
    part_mean = torch.empty((samples, splits, chans), dtype=torch.float32, device=x.device)
    part_m2 = torch.empty_like(part_mean)
    grid = (samples, triton.cdiv(chans, block_c))
    _cl_stats_kernel[grid + (splits,)](x, part_mean, part_m2, spatial, chans, split_rows,
                                       BLOCK_R=STATS_TILE[0], BLOCK_C=block_c, num_warps=STATS_WARPS)
    mean = torch.empty((samples, chans), dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    _cl_finalize_kernel[grid](part_mean, part_m2, mean, rstd, spatial, chans, splits, split_rows, eps,
                              BLOCK_S=triton.next_power_of_2(splits), BLOCK_C=block_c, num_warps=4)
    return mean, rstd


def _instance_norm_channels_last(x, residual, norm_residual, slope, eps, weight, bias, out) -> torch.Tensor:
    if out is None:
        out = torch.empty_like(x)  # keeps the channels-last strides
    else:
        _check_out(out, x)
    samples, chans, spatial = x.shape[0], x.shape[1], x[0, 0].numel()
    x_stats = _cl_stats(x, eps)
    r_stats = _cl_stats(residual, eps) if residual is not None and norm_residual else x_stats
    rows, block_c = APPLY_TILE[0], _channel_block(chans, APPLY_TILE)
    _cl_apply_kernel[(triton.cdiv(spatial, rows), triton.cdiv(chans, block_c), samples)](
        x, *x_stats, x if residual is None else residual, *r_stats, x if weight is None else weight,
        x if bias is None else bias, out, spatial, chans, out.stride(3), slope, HAS_RESIDUAL=residual is not None,
        NORM_RESIDUAL=norm_residual, AFFINE=weight is not None, BLOCK_R=rows, BLOCK_C=block_c, num_warps=APPLY_WARPS)
    return out


def _stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    planes = x.shape[0] * x.shape[1]
    mean = torch.empty(planes, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    _plane_stats_kernel[(planes,)](x, mean, rstd, x[0, 0].numel(), eps, BLOCK=STATS_BLOCK, num_warps=8)
    return mean, rstd


def instance_norm_leaky_relu(x: torch.Tensor, residual: torch.Tensor | None = None, norm_residual: bool = True,
                             slope: float = 0.01, eps: float = 1e-5, weight: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """leaky_relu(IN(x) [* weight + bias] [+ IN(residual) or + residual]) for (N, C, *spatial) maps that are
    contiguous or channels-last (both of one layout); ``slope`` 1 gives the norm alone. The affine weight and
    bias, and ``out`` (where to write: a channels-last view such as ``cat[:, c:]``), are for channels-last
    2-D maps only."""
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError("The Triton instance norm needs CUDA tensors")
    last = channels_last(x)
    dense = (lambda t: channels_last(t)) if last else (lambda t: t.is_contiguous())
    if not dense(x) or (residual is not None and (not dense(residual) or residual.shape != x.shape)):
        raise ValueError("instance_norm_leaky_relu needs dense maps of one shape and layout")
    if (weight is not None or bias is not None or out is not None) and not (last and x.dim() == 4):
        raise ValueError("instance_norm_leaky_relu takes an affine weight or out for channels-last 2-D maps only")
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if last:
            return _instance_norm_channels_last(x, residual, norm_residual, slope, eps, weight, bias, out)
        out = torch.empty_like(x)
        x_mean, x_rstd = _stats(x, eps)
        r_mean, r_rstd = _stats(residual, eps) if residual is not None and norm_residual else (x_mean, x_rstd)
        _apply_kernel[(triton.cdiv(x.numel(), APPLY_BLOCK),)](
            x, x_mean, x_rstd, x if residual is None else residual, r_mean, r_rstd, out, x.numel(), x[0, 0].numel(),
            slope, HAS_RESIDUAL=residual is not None, NORM_RESIDUAL=norm_residual, BLOCK=APPLY_BLOCK, num_warps=4,
        )
    return out
