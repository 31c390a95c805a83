"""Instance normalisation fused with LeakyReLU and the residual sum of MONAI's ``UnetResBlock``, as Triton
kernels (CUDA inference).

Eager PyTorch spends five passes over a feature map on ``lrelu(norm(a) + norm(b))`` (statistics,
normalise, add, activate) plus two for ``lrelu(norm(a))``; here one kernel reads each map once for its
per-plane statistics (Welford-style: blocks combined by Chan's formula) and a second reads the maps again
and writes the activated sum. Affine-free InstanceNorm (biased variance), as ``nn.InstanceNorm2d``/``3d``
computes it in eval; statistics in fp32, the output in the input's dtype.

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


def _stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    planes = x.shape[0] * x.shape[1]
    mean = torch.empty(planes, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    _plane_stats_kernel[(planes,)](x, mean, rstd, x[0, 0].numel(), eps, BLOCK=STATS_BLOCK, num_warps=8)
    return mean, rstd


def instance_norm_leaky_relu(x: torch.Tensor, residual: torch.Tensor | None = None, norm_residual: bool = True,
                             slope: float = 0.01, eps: float = 1e-5) -> torch.Tensor:
    """leaky_relu(IN(x) [+ IN(residual) or + residual]) for contiguous (N, C, *spatial) maps."""
    if x.device.type != "cuda" and not _interpreting():
        raise RuntimeError("The Triton instance norm needs CUDA tensors")
    if not x.is_contiguous() or (residual is not None and (not residual.is_contiguous() or residual.shape != x.shape)):
        raise ValueError("instance_norm_leaky_relu needs contiguous maps of one shape")
    out = torch.empty_like(x)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        x_mean, x_rstd = _stats(x, eps)
        r_mean, r_rstd = _stats(residual, eps) if residual is not None and norm_residual else (x_mean, x_rstd)
        _apply_kernel[(triton.cdiv(x.numel(), APPLY_BLOCK),)](
            x, x_mean, x_rstd, x if residual is None else residual, r_mean, r_rstd, out, x.numel(), x[0, 0].numel(),
            slope, HAS_RESIDUAL=residual is not None, NORM_RESIDUAL=norm_residual, BLOCK=APPLY_BLOCK, num_warps=4,
        )
    return out
