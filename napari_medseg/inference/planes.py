"""Box prompts on any plane of a volume, at the plane's true aspect ratio.

A box drawn on a coronal view of a 0.7 x 0.7 x 5 mm CT covers pixels 7 times taller than wide; the
prompt model must see the anatomy as drawn, so the plane is resampled to square pixels first and the
mask is mapped back to the volume's own pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PromptError
from ..io.image import Image

ANISOTROPY_TOLERANCE = 1.05


@dataclass
class Plane:
    pixels: np.ndarray  # uint8 (rows, cols) or (rows, cols, 3), resampled to square pixels
    shape: tuple[int, int]  # the plane's own shape in the volume
    zoom: tuple[float, float]  # resampled / own size per axis

    def box_to_pixels(self, box) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        return x0 * self.zoom[1], y0 * self.zoom[0], x1 * self.zoom[1], y1 * self.zoom[0]

    def points_to_pixels(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=float) * [self.zoom[1], self.zoom[0]]

    def mask_to_plane(self, mask: np.ndarray) -> np.ndarray:
        if mask.shape == self.shape:
            return mask.astype(bool)
        from skimage.transform import resize

        return resize(mask.astype(np.float32), self.shape, order=1, anti_aliasing=True) > 0.5


def plane_spacing(image: Image, axis: int | None) -> tuple[float, float]:
    """(row, col) pixel size of a plane; ``axis`` is the numpy axis held fixed (None for 2-D)."""
    numpy_spacing = list(image.spacing[::-1])
    if axis is not None:
        del numpy_spacing[axis]
    return numpy_spacing[0], numpy_spacing[1]


def take_plane(image: Image, axis: int | None, index: int | None, limits: tuple[float, float]) -> Plane:
    """One plane as the model sees it: uint8 in the display window ``limits``, square pixels.

    ``axis`` is the numpy axis held fixed at ``index`` (None for 2-D images).
    """
    array = image.array
    if axis is not None:
        _check_index(array, axis, index)
    if not isinstance(array, np.ndarray):  # a lazy array (zarr, dask): read this one plane only
        from ..io.declared import check_memory

        shape = [s for i, s in enumerate(array.shape) if i != axis]
        check_memory(int(np.prod(shape)) * array.dtype.itemsize, "the plane")
        array = np.asarray(array[(slice(None),) * axis + (index,)] if axis is not None else array[...])
    elif axis is not None:
        array = np.take(array, index, axis=axis)
    return _as_plane(array, image, axis, limits, array.shape[:2])


def take_region(image: Image, axis: int | None, index: int | None, limits: tuple[float, float],
                rows: slice, cols: slice, step: int = 1) -> Plane:
    """The ``rows`` x ``cols`` part of a plane as `take_plane` makes the whole one, reading only that part of
    ``image.array`` (any array-like with numpy slicing: zarr, dask). ``step`` > 1 averages step x step blocks
    as it reads (the plane's extent must be a multiple of it); the Plane's ``shape`` is the region's own."""
    if axis is not None:
        _check_index(image.array, axis, index)
    region = read_region(image.array, rows, cols, step, axis, index)
    return _as_plane(region, image, axis, limits, (rows.stop - rows.start, cols.stop - cols.start))


def read_region(array, rows: slice, cols: slice, step: int = 1, axis: int | None = None,
                index: int | None = None, band: int = 1024) -> np.ndarray:
    """``rows`` x ``cols`` of the plane ``index`` along ``axis`` (None: ``array`` is 2-D, colour last) as a
    numpy array, read with one slicing call (``step`` 1) or, averaged over step x step blocks, ``band`` rows at
    a time, so that no more than a band of the full resolution is held at once."""
    def part(r: slice):
        where = [r, cols]
        if axis is not None:
            where.insert(axis, index)
        return np.asarray(array[tuple(where)])

    if step == 1:
        return part(rows)
    height, width = rows.stop - rows.start, cols.stop - cols.start
    if height % step or width % step:
        raise ValueError(f"a {height}x{width} region cannot be averaged in {step}x{step} blocks")
    band = max(step, band // step * step)
    out = []
    for top in range(rows.start, rows.stop, band):
        block = part(slice(top, min(top + band, rows.stop))).astype(np.float32)
        h, w = block.shape[0] // step, width // step
        out.append(block.reshape(h, step, w, step, *block.shape[2:]).mean(axis=(1, 3)))
    return np.concatenate(out)


def _check_index(array, axis: int, index: int) -> None:
    if not 0 <= index < array.shape[axis]:
        raise PromptError(f"Slice {index} is outside the volume (0..{array.shape[axis] - 1})")


def _as_plane(array: np.ndarray, image: Image, axis: int | None, limits, shape: tuple[int, int]) -> Plane:
    """A Plane standing for ``shape`` own pixels of the plane from ``array`` (those pixels, or their block
    averages): uint8 in ``limits`` (RGB as it is), resampled to square pixels."""
    from .intensity import to_uint8

    if image.is_rgb:
        pixels = array[..., :3] if array.dtype == np.uint8 else to_uint8(array[..., :3], (0, 255))
    elif image.channel_axis is not None:
        raise PromptError(f"Prompt models need a grey or RGB image; this one has {array.shape[-1]} channels")
    else:
        pixels = to_uint8(array, limits)
    read = pixels.shape[:2]
    rows, cols = plane_spacing(image, axis)
    ratio = rows / cols
    if 1 / ANISOTROPY_TOLERANCE <= ratio <= ANISOTROPY_TOLERANCE:
        return Plane(pixels, tuple(shape), (read[0] / shape[0], read[1] / shape[1]))
    from skimage.transform import resize

    finer = min(rows, cols)
    new_shape = (max(1, round(read[0] * rows / finer)), max(1, round(read[1] * cols / finer)))
    resized = resize(pixels, new_shape + pixels.shape[2:], order=1, preserve_range=True, anti_aliasing=False)
    return Plane(np.round(resized).astype(np.uint8), tuple(shape), (new_shape[0] / shape[0], new_shape[1] / shape[1]))


def square_scale(image: Image, axis: int | None) -> tuple[float, float]:
    """(rows, cols) size of a plane's pixel in square pixels, as `take_plane` resamples it ((1, 1) when it
    keeps the pixels)."""
    rows, cols = plane_spacing(image, axis)
    ratio = rows / cols
    if 1 / ANISOTROPY_TOLERANCE <= ratio <= ANISOTROPY_TOLERANCE:
        return 1.0, 1.0
    finer = min(rows, cols)
    return rows / finer, cols / finer


def box_from_rectangle(vertices: np.ndarray, displayed: tuple[int, int]) -> tuple[float, float, float, float]:
    """A napari rectangle as (x0, y0, x1, y1) on the displayed plane, in SAM's pixel coordinates.

    napari puts pixel centres at integer data coordinates; SAM-family models put pixel edges there,
    hence the half-pixel shift.
    """
    rows = vertices[:, displayed[0]] + 0.5
    cols = vertices[:, displayed[1]] + 0.5
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


def resample_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized (nearest) to ``shape``."""
    if mask.shape == tuple(shape):
        return mask.astype(bool)
    from skimage.transform import resize

    return resize(mask.astype(np.float32), shape, order=0) > 0.5
