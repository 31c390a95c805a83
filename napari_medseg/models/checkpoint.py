"""Safe reading of checkpoint files.

Every file is read with ``torch.load(weights_only=True)``. Official nnU-Net checkpoints also hold
numpy scalars and dtypes in their training log; exactly those types are allow-listed.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from ..errors import CheckpointError


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _numpy_safe_globals() -> list:
    import numpy as np

    types = [np.dtype, np.ndarray]
    for name in ("float64", "float32", "int64", "int32", "bool_"):
        types.append(type(np.dtype(name)))
    try:  # numpy >= 2 moved the scalar reconstructor
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    return [*types, scalar, _reconstruct]


# torch.save's legacy (pre-1.6) format starts with its magic number pickled at protocol 2
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _is_torch_file(path: Path) -> bool:
    """By the first bytes: a zip archive (torch.save since 1.6; a truncated one is still one) or the legacy magic."""
    with open(path, "rb") as handle:
        head = handle.read(len(_LEGACY_MAGIC))
    return head.startswith((_LEGACY_MAGIC, b"PK\x03\x04"))


def read_checkpoint(path: str | Path, map_location="cpu"):
    """The object stored in a weights file, loaded without running arbitrary code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weights file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Weights file is empty: {path}")
    if not _is_torch_file(path):
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (neither a torch.save zip archive nor "
                              "torch's legacy format)")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        text = str(exc)
        if "Unsupported global" in text:  # a real pickle of classes or functions, refused by weights_only
            culprit = text.split("GLOBAL", 1)[-1].split("was not")[0].strip() if "GLOBAL" in text else ""
            raise CheckpointError(
                f"{path.name} needs arbitrary Python objects to load{(' (' + culprit + ')') if culprit else ''}; "
                "it was refused for safety. Re-save its state_dict with torch.save(model.state_dict(), ...)."
            ) from None
        if isinstance(exc, (zipfile.BadZipFile, EOFError, RuntimeError, OSError)) or "zip" in text.lower():
            raise CheckpointError(f"{path.name} is corrupt or truncated and cannot be read ({text.splitlines()[0][:120]})") from None
        # random bytes, text, other pickles: torch's own text would advise weights_only=False
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (or is damaged): its contents cannot be "
                              "read as saved tensors") from None
