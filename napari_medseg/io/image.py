"""`Image`: a pixel array with the geometry that places it in the world.

Conventions (nnU-Net's reader/writer contract, SimpleITK's physical space):
- ``array`` is in numpy order: (z, y, x) for volumes, (y, x) for 2D images, with the colour or
  channel axis last when ``channel_axis`` is set (so RGB photos are (y, x, 3)).
- ``spacing``, ``origin`` and ``direction`` are in SimpleITK/ITK order (x, y, z) and describe
  LPS physical space in millimetres, exactly as ``SimpleITK.Image`` stores them.
- ``affine`` is the RAS+ 4x4 that maps nibabel voxel indices (i, j, k) = (x, y, z) to world
  millimetres, i.e. what ``nibabel.load(path).affine`` reports for the same file.
- ``napari_affine`` maps numpy indices (z, y, x) to napari world coordinates, which are LPS
  millimetres listed in numpy order (z, y, x); image, labels and prompt layers share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Image:
    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    modality: str = "unknown"  # CT, MR, PT, US, RGB, microscopy, unknown
    intensity: str = "raw"  # HU (CT after rescale), raw, rgb
    channel_axis: int | None = None
    path: Path | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=float).reshape(self.ndim, self.ndim)
        if len(self.spacing) != self.ndim or len(self.origin) != self.ndim:
            raise ValueError(
                f"geometry has {len(self.spacing)} spacings and {len(self.origin)} origin values "
                f"for a {self.ndim}-D image"
            )

    @property
    def ndim(self) -> int:
        """Spatial dimensions (2 or 3), channels excluded."""
        return self.array.ndim - (self.channel_axis is not None)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape in numpy order without the channel axis."""
        shape = list(self.array.shape)
        if self.channel_axis is not None:
            del shape[self.channel_axis]
        return tuple(shape)

    @property
    def is_rgb(self) -> bool:
        return self.channel_axis is not None and self.array.shape[self.channel_axis] in (3, 4) and self.intensity == "rgb"

    def _matrix_lps(self) -> np.ndarray:
        """4x4 from ITK index (x, y, z) to LPS millimetres, padded to 3-D for 2-D images."""
        m = np.eye(4)
        n = self.ndim
        m[:n, :n] = self.direction @ np.diag(self.spacing)
        m[:n, 3] = self.origin
        return m

    @property
    def affine(self) -> np.ndarray:
        """RAS+ affine over nibabel voxel order (x, y, z), as nibabel reports it."""
        return _LPS_TO_RAS @ self._matrix_lps()

    @property
    def napari_affine(self) -> np.ndarray:
        """(ndim+1)x(ndim+1) affine from numpy indices to napari world (LPS, numpy axis order)."""
        n = self.ndim
        m = np.eye(n + 1)
        m[:n, :n] = (self.direction @ np.diag(self.spacing))[::-1, ::-1]
        m[:n, n] = self.origin[::-1]
        return m

    @property
    def is_axis_aligned(self) -> bool:
        """True when the direction is a signed permutation-free diagonal (no rotation, no swaps)."""
        return bool(np.allclose(np.abs(self.direction), np.eye(self.ndim), atol=1e-6))

    def with_array(self, array: np.ndarray, channel_axis: int | None = None, **changes) -> "Image":
        """The same geometry around another array (e.g. a label map)."""
        return replace(self, array=array, channel_axis=channel_axis, **changes)

    def geometry(self) -> dict:
        """JSON-friendly geometry, stored with annotations and layer metadata."""
        return {
            "shape": list(self.spatial_shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.ravel().tolist(),
        }

    def __repr__(self) -> str:
        return (
            f"Image(shape={self.array.shape}, dtype={self.array.dtype}, modality={self.modality!r}, "
            f"spacing={tuple(round(s, 4) for s in self.spacing)}, path={str(self.path) if self.path else None!r})"
        )
