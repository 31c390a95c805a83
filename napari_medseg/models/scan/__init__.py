"""Selective scan (the S6 recurrence of Mamba/VMamba) with interchangeable backends.

``selective_scan`` has the signature and semantics of mamba's ``selective_scan_fn``. For CUDA tensors it
runs mamba_ssm's CUDA kernel when mamba_ssm (with its compiled extension) is importable, else the
project's Triton kernel (``triton_scan.py``, forward only) when triton imports and nothing needs
gradients, else the project's chunk-parallel PyTorch scan (``chunked.py``), which also serves CPUs and
other devices. mamba_ssm and the PyTorch scan support autograd. ``NAPARI_MEDSEG_SCAN=torch|triton|mamba_ssm``
(or ``backend=...``) forces a backend. triton is imported only for CUDA tensors without mamba_ssm.
"""
from __future__ import annotations

import functools
import os

BACKENDS = ("mamba_ssm", "triton", "torch")


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


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether triton imports (imported on first call only)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken installation
        return False
    return True


def backend_for(device, needs_grad: bool = False) -> str:
    """The backend ``selective_scan`` uses for tensors on ``device`` (``needs_grad``: autograd must flow)."""
    forced = os.environ.get("NAPARI_MEDSEG_SCAN")
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"NAPARI_MEDSEG_SCAN={forced!r}; expected one of {', '.join(BACKENDS)}")
        return forced
    if getattr(device, "type", device) != "cuda":
        return "torch"
    if mamba_ssm_scan() is not None:
        return "mamba_ssm"
    return "triton" if not needs_grad and triton_available() else "torch"


def _needs_grad(*tensors) -> bool:
    import torch

    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, backend: str | None = None):
    """out = selective_scan(u (b, D, L), delta (b, D, L), A (D, N), B/C (b, G, N, L), D (D,), ...).

    Returns ``out`` (b, D, L) in u's dtype, or ``(out, last_state)`` with ``return_last_state``.
    """
    needs_grad = _needs_grad(u, delta, A, B, C, D, z, delta_bias)
    chosen = backend or backend_for(u.device, needs_grad)
    if chosen == "triton":
        if needs_grad:
            raise RuntimeError("The Triton selective scan is forward-only; train with the torch or mamba_ssm backend")
        from .triton_scan import triton_selective_scan

        try:
            return triton_selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                                         delta_softplus=delta_softplus, return_last_state=return_last_state)
        except NotImplementedError:  # complex A, constant B/C, float64: unless asked for by argument,
            if backend:  # the PyTorch scan takes over
                raise
            chosen = "torch"
    backend = chosen
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


__all__ = ["BACKENDS", "backend_for", "mamba_ssm_scan", "selective_scan", "triton_available"]
