"""Device choice shared by the widget, the CLI and scripts."""
from __future__ import annotations


def available_devices() -> list[str]:
    import torch

    devices = []
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return [*devices, "cpu"]


def resolve_device(device: str | None = None):
    """``None``/"auto" picks CUDA, then MPS, then CPU; an unavailable device is a clear error."""
    import torch

    from .errors import MedsegError

    if device in (None, "", "auto"):
        return torch.device(available_devices()[0])
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError("CUDA was requested but no CUDA GPU is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MedsegError(f"{device} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    if dev.type == "mps" and "mps" not in available_devices():
        raise MedsegError("MPS was requested but is not available on this machine")
    return dev
