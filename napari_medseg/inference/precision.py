"""The precision policy (faithful or fast) and, for automatic segmentation, the autocast type and a float16
overflow guard.

Every predictor takes ``precision``: "faithful" (the default) computes what the authors' code computes in
float32; "fast" is the reduced precision the hardware runs natively (bfloat16 where it has it), which can
change masks and is only ever an explicit choice. The README's precision section gives the measured costs.

bfloat16 has float32's range; float16 stops at 65504. Networks trained under bfloat16 (this project's
training uses it wherever the GPU has it) can carry activations past that, and float16 inference then
returns inf/NaN logits: measured on Swin-UMambas trained here, fp16 kept the fp32 arg-max on 56-61 % of
pixels, bf16 on 99.95-99.97 %. So GPUs with native bfloat16 use it, older ones float16 with a guard that
recomputes in float32 when an output is not finite.
"""
from __future__ import annotations

import logging

from ..errors import MedsegError

log = logging.getLogger(__name__)
AUTOCAST_DTYPES = ("float16", "bfloat16", "float32")
PRECISIONS = ("faithful", "fast")
_RENAMED = {"fp32": "faithful", "float32": "faithful", "bf16": "fast"}  # BoxPredictor's earlier names


def precision_policy(precision) -> str:
    """``precision`` checked: "faithful" (also for None and the earlier "fp32") or "fast" (earlier "bf16")."""
    if precision is None:
        return "faithful"
    name = _RENAMED.get(str(precision).lower(), str(precision).lower())
    if name not in PRECISIONS:
        raise MedsegError(f"Unknown precision {precision!r}; use 'faithful' (float32 as the authors run it, the "
                          f"default) or 'fast' (reduced precision where the hardware has it; can change masks)")
    return name


def policy_dtype(precision, dtype, device):
    """The autocast type of an automatic prediction: ``dtype`` when given (an explicit choice), else float32
    for "faithful" and ``default_dtype`` (bfloat16 or float16 on CUDA) for "fast"."""
    import torch

    if precision_policy(precision) == "fast" and dtype is None:
        return default_dtype(device)
    return autocast_dtype(torch.float32 if dtype is None else dtype, device)


def default_dtype(device):
    """bfloat16 on CUDA GPUs that compute it natively (Ampere and later), else float16; float32 off CUDA."""
    import torch

    if device.type != "cuda":
        return torch.float32
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast_dtype(dtype, device):
    """``dtype`` (a torch dtype, its name, or None for ``default_dtype``) as a torch dtype."""
    import torch

    if dtype is None:
        return default_dtype(device)
    name = str(dtype).removeprefix("torch.")
    if name not in AUTOCAST_DTYPES:
        raise MedsegError(f"Unknown dtype {dtype!r}; use one of {', '.join(AUTOCAST_DTYPES)}")
    return getattr(torch, name)


class Precision:
    """The autocast type of one prediction; a float16 output that is not finite is recomputed in float32,
    and float32 is kept for the rest of the prediction (announced once through ``warn``)."""

    def __init__(self, device, dtype=None, warn=None):
        self.device = device
        self.dtype = autocast_dtype(dtype, device)
        self.warn = warn or log.warning

    def __call__(self, forward, *args):
        import torch

        out = self._run(forward, args)
        outputs = out if isinstance(out, (list, tuple)) else [out]
        if self.dtype is torch.float16 and not all(bool(torch.isfinite(t).all()) for t in outputs):
            self.warn("float16 overflowed in this network (its activations exceed 65504); continuing in float32")
            self.dtype = torch.float32
            out = self._run(forward, args)
        return out

    def _run(self, forward, args):
        import torch

        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not torch.float32):
            return forward(*args)
