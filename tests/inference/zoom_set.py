"""Small objects of known outline in real tissue: synthetic nuclei pasted into scikit-image's IHC image.

The background is a mosaic of the 512x512 immunohistochemistry photograph (bundled with scikit-image),
flipped and turned tile by tile; each nucleus is an irregular ellipse of hematoxylin-like colour with
chromatin texture and a soft edge, pasted one per grid cell so that none touch. Its true outline is the
pasted shape, so Dice against it measures the prompt pipeline, not a reference segmentation.
Shared by tests/inference/test_zoom.py and benchmarks/bench_zoom.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Nucleus:
    mask: np.ndarray  # boolean, the true outline, within rows/cols
    rows: slice
    cols: slice
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (pixel edges), the bounding box with a small jitter

    def full(self, hw) -> np.ndarray:
        out = np.zeros(hw, bool)
        out[self.rows, self.cols] = self.mask
        return out


def tissue(tiles: int, seed: int = 0) -> np.ndarray:
    """(512 tiles, 512 tiles, 3) uint8: the IHC photograph, each tile flipped and turned at random."""
    from skimage import data

    base = data.immunohistochemistry()
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(tiles):
        row = []
        for _ in range(tiles):
            tile = np.rot90(base, int(rng.integers(4)))
            row.append(tile[:, ::-1] if rng.integers(2) else tile)
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0))


def _shape(rng, radius: float) -> np.ndarray:
    """An irregular ellipse (boolean) of mean radius ``radius``."""
    half = int(np.ceil(radius * 1.6)) + 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    elongation = rng.uniform(1.0, 1.5)
    theta = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(0, 0.06) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    r = np.hypot(u / np.sqrt(elongation), v * np.sqrt(elongation))
    return r <= radius * wobble


def paste_nuclei(image: np.ndarray, count: int, radius=(8, 28), seed: int = 1) -> tuple[np.ndarray, list[Nucleus]]:
    """``image`` with ``count`` nuclei pasted on a grid (one per cell, placed at random inside it)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = image.astype(np.float64)
    h, w = image.shape[:2]
    grid = int(np.ceil(np.sqrt(count)))
    cell_h, cell_w = h // grid, w // grid
    nuclei = []
    for n in range(count):
        shape = _shape(rng, rng.uniform(*radius))
        sh, sw = shape.shape
        top = (n // grid) * cell_h + int(rng.integers(0, max(1, cell_h - sh)))
        left = (n % grid) * cell_w + int(rng.integers(0, max(1, cell_w - sw)))
        alpha = gaussian_filter(shape.astype(np.float64), 0.8)
        colour = np.array([75, 62, 128]) + rng.normal(0, 12, 3)
        texture = gaussian_filter(rng.normal(0, 1, (sh, sw)), 1.5) * 40
        nucleus = np.clip(colour + texture[..., None], 0, 255)
        region = out[top:top + sh, left:left + sw]
        region[:] = region * (1 - alpha[..., None]) + nucleus * alpha[..., None]
        truth = alpha > 0.5
        rr, cc = np.nonzero(truth)
        jitter = rng.integers(0, 3, 4)
        box = (float(left + cc.min() - jitter[0]), float(top + rr.min() - jitter[1]),
               float(left + cc.max() + 1 + jitter[2]), float(top + rr.max() + 1 + jitter[3]))
        nuclei.append(Nucleus(truth, slice(top, top + sh), slice(left, left + sw), box))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), nuclei


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


class MirroredTissue:
    """A lazily made (height, width, 3) uint8 image: ``tile`` repeated with mirroring (seamless), made only
    where it is sliced. Counts the pixels handed out (``read``), so a test can tell a crop from the whole.

    Supports what a crop reader asks of zarr or dask arrays: ``shape``, ``dtype``, ``ndim`` and
    ``[rows, cols]`` / ``[rows, cols, channels]`` with slices of step 1.
    """

    def __init__(self, tile: np.ndarray, height: int, width: int):
        self.tile, self.shape, self.dtype, self.ndim = tile, (height, width, tile.shape[2]), tile.dtype, 3
        self.read = 0

    @staticmethod
    def _positions(part: slice, extent: int, period: int) -> np.ndarray:
        start, stop, step = part.indices(extent)
        if step != 1:
            raise IndexError("only unit steps")
        index = np.arange(start, stop) % (2 * period)
        return np.where(index < period, index, 2 * period - 1 - index)

    def __getitem__(self, where):
        where = where if isinstance(where, tuple) else (where,)
        if len(where) < 2 or not all(isinstance(w, slice) for w in where[:2]):
            raise IndexError(f"MirroredTissue takes [rows, cols(, channels)] slices, not {where!r}")
        rows = self._positions(where[0], self.shape[0], self.tile.shape[0])
        cols = self._positions(where[1], self.shape[1], self.tile.shape[1])
        out = self.tile[rows[:, None], cols[None, :]]
        out = out[..., where[2]] if len(where) > 2 else out
        self.read += out.shape[0] * out.shape[1]
        return out

    def at(self, box, tile_row: int, tile_col: int):
        """``box`` of the tile as it appears in the (even, unmirrored) copy ``2 * tile_row``, ``2 * tile_col``."""
        dy, dx = 2 * tile_row * self.tile.shape[0], 2 * tile_col * self.tile.shape[1]
        x0, y0, x1, y1 = box
        return x0 + dx, y0 + dy, x1 + dx, y1 + dy
