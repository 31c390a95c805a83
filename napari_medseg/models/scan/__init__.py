"""Selective scan (the S6 recurrence of Mamba/VMamba) with interchangeable backends.

``selective_scan`` has the signature and semantics of mamba's ``selective_scan_fn``. It runs mamba_ssm's
CUDA kernel for CUDA tensors when mamba_ssm (with its compiled extension) is importable, and the
project's own chunk-parallel PyTorch scan otherwise (CPU, other GPUs, or no mamba_ssm). Both support
autograd. ``NAPARI_MEDSEG_SCAN=torch`` (or ``backend="torch"``) forces the PyTorch scan.
"""
from __future__ import annotations

import functools
import os

BACKENDS = ("mamba_ssm", "torch")


@functools.lru_cache(maxsize=1)
def mamba_ssm_scan():
    """mamba_ssm's ``selective_scan_fn`` if it and its CUDA extension import, else None."""
    try:
        from mamba_ssm.ops import selective_scan_interface as interface
    except Exception:  # ImportError, or an ABI mismatch of the compiled extension
        return None
    if getattr(interface, "selective_scan_cuda", True) is None:  # mamba_ssm >= 2.2.3 imports without it
        return None
    return interface.selective_scan_fn


def backend_for(device) -> str:
    """The backend ``selective_scan`` uses for tensors on ``device``."""
    forced = os.environ.get("NAPARI_MEDSEG_SCAN")
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"NAPARI_MEDSEG_SCAN={forced!r}; expected one of {', '.join(BACKENDS)}")
        return forced
    return "mamba_ssm" if getattr(device, "type", device) == "cuda" and mamba_ssm_scan() is not None else "torch"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, backend: str | None = None):
    """out = selective_scan(u (b, D, L), delta (b, D, L), A (D, N), B/C (b, G, N, L), D (D,), ...).

    Returns ``out`` (b, D, L) in u's dtype, or ``(out, last_state)`` with ``return_last_state``.
    """
    backend = backend or backend_for(u.device)
    if backend == "mamba_ssm":
        scan = mamba_ssm_scan()
        if scan is None:
            raise RuntimeError("mamba_ssm's CUDA selective scan is not installed (pip install mamba-ssm)")
        if u.device.type != "cuda":
            raise RuntimeError("mamba_ssm's selective scan needs CUDA tensors")
    elif backend == "torch":
        from .chunked import chunked_selective_scan as scan
    else:
        raise ValueError(f"Unknown selective-scan backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                return_last_state=return_last_state)


__all__ = ["BACKENDS", "backend_for", "mamba_ssm_scan", "selective_scan"]
