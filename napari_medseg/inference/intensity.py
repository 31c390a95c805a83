"""Intensity windows: what a prompt model sees of a CT/MR slice (as MedSAM's pre-processing)."""
from __future__ import annotations

import numpy as np

# name -> (level, width) in HU
CT_WINDOWS = {
    "soft tissue": (40, 400),
    "abdomen": (60, 400),
    "liver": (30, 150),
    "lung": (-600, 1500),
    "bone": (400, 1800),
    "brain": (40, 80),
    "mediastinum": (50, 350),
}
DEFAULT_CT_WINDOW = "soft tissue"


def window_limits(name: str) -> tuple[float, float]:
    level, width = CT_WINDOWS[name]
    return level - width / 2, level + width / 2


def display_limits(array: np.ndarray, intensity: str) -> tuple[float, float]:
    """Default window: soft tissue for CT in HU, 0.5-99.5 percentiles of non-zero voxels otherwise."""
    if intensity == "HU":
        return window_limits(DEFAULT_CT_WINDOW)
    values = array[np.isfinite(array)]
    nonzero = values[values != 0]
    values = nonzero if nonzero.size > 0.01 * values.size else values
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5]) if values.size > 100 else (values.min(), values.max())
    if high <= low:
        high = low + 1
    return float(low), float(high)


def to_uint8(array: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """Clip to ``limits`` and scale to 0..255 (RGB uint8 input is returned unchanged)."""
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:
        return array
    low, high = limits
    scaled = (np.clip(array.astype(np.float32), low, high) - low) / max(high - low, 1e-6)
    return (scaled * 255 + 0.5).astype(np.uint8)
