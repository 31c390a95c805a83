"""napari-medseg: segment medical and microscopy images with research models, correct, fine-tune.

Heavy dependencies load lazily: ``import napari_medseg`` is instant.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-medseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "segment", "read_image", "write_labels", "convert_labels", "load_checkpoint", "load_model"]


def __getattr__(name: str):
    if name == "segment":
        from .segmentation import segment

        return segment
    if name in ("read_image", "write_labels", "convert_labels"):
        from . import io

        return getattr(io, name)
    if name == "load_checkpoint":
        from .models import load_checkpoint

        return load_checkpoint
    if name == "load_model":
        from .models.load import load_model

        return load_model
    raise AttributeError(f"module 'napari_medseg' has no attribute {name!r}")
