"""Box prompts that zoom to the object: the model sees a context crop around the box, not the whole image.

Every box model sees a fixed input (LiteMedSAM 256 px, SAM, MedSAM and LVM-Med 1024 px on the longest or
each side). On a 2,048 px microscopy field seen by LiteMedSAM, or a slide of 20,000 px, a cell becomes a few
pixels of that input. nnInteractive's AutoZoom answers this for its 3-D model: predict in a patch around the
prompt and zoom out (x1.5, up to 4x) while the prediction changes at the patch's border. Here, for 2-D box
prompts, the same idea with every box model's own recipe applied to the crop:

- the crop is a square (in the plane's physical pixels) centred on the box, ``CONTEXT`` times the box's
  longer side and at least the model's input (where the image is that large), so that a small object is
  seen at the image's own resolution and a large one keeps a margin of context around it;
- it is read from the image alone (any array-like with numpy slicing: zarr, dask, numpy), at full
  resolution, or averaged in blocks while reading when it is more than twice the model's input;
- the predicted mask is written back at the image's own resolution into the crop's region;
- where the mask touches an edge of the crop that is not the image's border, the object goes on outside
  it: the crop grows ``GROWTH`` times, at most ``MAX_GROWTH_STEPS`` times.

Policy (``zoom``): "auto" (default) zooms where the whole plane would be down-scaled more than
``AUTO_DOWNSCALE`` (2) times to fit the model's input, and keeps the full-image recipe (the authors',
unchanged) where it fits without that; "on" always zooms a box prompt; "off" never does. Prompts without a
box (points alone) use the full-image recipe: they say where the object is, not how large it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import PromptError

ZOOM_CHOICES = ("auto", "on", "off")
AUTO_DOWNSCALE = 2.0  # "auto" zooms where the plane would be shrunk more than this to fit the model's input
CONTEXT = 3.0  # crop side / the box's longer side
GROWTH = 1.5  # the crop grows this much when the mask reaches its edge (nnInteractive's factor)
MAX_GROWTH_STEPS = 3  # at most 1.5^3 = 3.4 times the first crop
READ_FACTOR = 2  # crops are read at no more than this many times the model's input (block averages beyond)


def check_zoom(zoom) -> str:
    """``zoom`` as one of `ZOOM_CHOICES`, or PromptError."""
    if zoom not in ZOOM_CHOICES:
        raise PromptError(f"zoom must be one of {', '.join(ZOOM_CHOICES)}; got {zoom!r}")
    return zoom


def zoom_applies(zoom: str, hw, size: int, box) -> bool:
    """Whether a prompt with ``box`` (None: points alone) on a plane of ``hw`` square pixels zooms for a model
    whose input is ``size`` pixels."""
    if check_zoom(zoom) == "off" or box is None:
        return False
    return zoom == "on" or max(hw) > AUTO_DOWNSCALE * size


@dataclass(frozen=True)
class Window:
    """Rows ``top:bottom`` and columns ``left:right`` of a plane, in its own pixels."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def rows(self) -> slice:
        return slice(self.top, self.bottom)

    @property
    def cols(self) -> slice:
        return slice(self.left, self.right)

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def covers(self, hw) -> bool:
        return (self.top, self.left, self.bottom, self.right) == (0, 0, hw[0], hw[1])


@dataclass
class RegionMask:
    """A boolean mask of ``window`` (own pixels of the plane); everything outside it is background."""

    mask: np.ndarray
    window: Window

    def full(self, hw) -> np.ndarray:
        """The mask over the whole plane of size ``hw``."""
        out = np.zeros(tuple(hw), dtype=bool)
        out[self.window.rows, self.window.cols] = self.mask
        return out

    def touches_inner_edge(self, hw) -> bool:
        """The mask reaches an edge of the window that is not the plane's border."""
        w, m = self.window, self.mask
        return bool((w.top > 0 and m[0].any()) or (w.left > 0 and m[:, 0].any())
                    or (w.bottom < hw[0] and m[-1].any()) or (w.right < hw[1] and m[:, -1].any()))


def _span(centre: float, length: float, extent: int) -> tuple[int, int]:
    length = min(extent, max(1, math.ceil(length)))
    start = min(max(int(round(centre - length / 2)), 0), extent - length)
    return start, start + length


def context_window(box, hw, size: int, growth: int = 0, scale=(1.0, 1.0)) -> Window:
    """The crop around ``box`` (x0, y0, x1, y1 in own pixels of a plane of size ``hw``) after ``growth`` steps.

    ``scale`` (rows, cols): square pixels per own pixel, so that the crop is square in the plane's physical
    extent, as the model sees it.
    """
    x0, y0, x1, y1 = box
    rows_scale, cols_scale = scale
    side = max((x1 - x0) * cols_scale, (y1 - y0) * rows_scale) * CONTEXT
    side = max(side, size) * GROWTH ** growth
    top, bottom = _span((y0 + y1) / 2, side / rows_scale, hw[0])
    left, right = _span((x0 + x1) / 2, side / cols_scale, hw[1])
    return Window(top, left, bottom, right)


def read_step(window: Window, size: int, scale=(1.0, 1.0)) -> int:
    """The block size a crop is averaged over as it is read: 1 up to `READ_FACTOR` times the model's input."""
    longest = max(window.shape[0] * scale[0], window.shape[1] * scale[1])
    return max(1, int(longest // (READ_FACTOR * size)))


def fit_to_step(window: Window, step: int, box) -> Window:
    """``window`` trimmed to multiples of ``step`` on each axis, on the side away from ``box``."""
    if step == 1:
        return window
    x0, y0, x1, y1 = box
    top, left, bottom, right = window.top, window.left, window.bottom, window.right
    extra = (bottom - top) % step
    top, bottom = (top + extra, bottom) if bottom - extra < y1 else (top, bottom - extra)
    extra = (right - left) % step
    left, right = (left + extra, right) if right - extra < x1 else (left, right - extra)
    return Window(top, left, bottom, right)


def predict_zoomed(predictor, read: Callable, hw, box, points=None, point_labels=None, *, display_range=None,
                   scale=(1.0, 1.0), key=None, max_steps: int = MAX_GROWTH_STEPS) -> RegionMask:
    """The mask of the object in ``box`` on a plane of ``hw`` own pixels, predicted in crops around it.

    ``read(window, step)`` returns an `inference.planes.Plane` of that window (pixels for the model, the
    window's shape and the zoom between them); ``predictor`` is a `BoxPredictor`. Points (x, y) travel into
    the crop, which grows to hold them. Crop embeddings are cached under a key naming the crop (its window
    and block size, with ``key``); a crop that is the whole plane is the full-image recipe, cached as such.
    """
    from .box2d import check_points, clip_box

    size = predictor.profile.size
    box = clip_box(box, hw)
    extent = box
    if points is not None and len(points):
        xy = check_points(np.asarray(points, dtype=np.float64).reshape(-1, 2), hw, point_labels)
        extent = np.array([min(box[0], xy[:, 0].min()), min(box[1], xy[:, 1].min()),
                           max(box[2], xy[:, 0].max()), max(box[3], xy[:, 1].max())])
    for growth in range(max_steps + 1):
        window = context_window(extent, hw, size, growth, scale)
        step = read_step(window, size, scale)
        window = fit_to_step(window, step, extent)
        plane = read(window, step)
        crop_key = None if window.covers(hw) else ("zoom", window.top, window.left, window.bottom, window.right,
                                                   step, key)
        predictor.set_image(plane.pixels, key=crop_key, display_range=display_range)
        local = plane.box_to_pixels(box - [window.left, window.top, window.left, window.top])
        local_points = None
        if points is not None and len(points):
            local_points = plane.points_to_pixels(xy - [window.left, window.top])
        mask = predictor.predict(box=local, points=local_points, point_labels=point_labels)
        region = RegionMask(plane.mask_to_plane(mask), window)
        if window.covers(hw) or not region.touches_inner_edge(hw):
            break
    return region


def predict_box(predictor, pixels: np.ndarray, box, zoom: str = "auto", display_range=None) -> np.ndarray:
    """The (H, W) mask for ``box`` on a 2-D slice ``pixels`` (as `BoxPredictor.set_image` takes it), whole
    or zoomed by the ``zoom`` policy. Propagation prompts each slice this way."""
    from .planes import Plane, read_region

    hw = pixels.shape[:2]
    if not zoom_applies(zoom, hw, predictor.profile.size, box):
        predictor.set_image(pixels, display_range=display_range)
        return predictor.predict(box=box)

    def read(window: Window, step: int) -> Plane:
        region = read_region(pixels, window.rows, window.cols, step)
        if step > 1 and pixels.dtype == np.uint8:
            region = np.rint(region).astype(np.uint8)
        return Plane(region, window.shape, (1 / step, 1 / step))

    return predict_zoomed(predictor, read, hw, box, display_range=display_range).full(hw)


def default_limits(image, window=None) -> tuple[float, float] | None:
    """The display window prompt models see a grey ``image`` through when none is given: the image's own
    (`intensity.display_limits`) for arrays in memory; for lazy ones (zarr, dask: not read whole), those of
    the plane region ``window`` = (axis, index, rows, cols). None for RGB."""
    from .intensity import display_limits, window_limits, DEFAULT_CT_WINDOW
    from .planes import read_region

    if image.is_rgb:
        return None
    if image.intensity == "HU":
        return window_limits(DEFAULT_CT_WINDOW)
    if isinstance(image.array, np.ndarray) or window is None:
        return display_limits(np.asarray(image.array), image.intensity)
    axis, index, rows, cols = window
    return display_limits(read_region(image.array, rows, cols, 1, axis, index), image.intensity)


def predict_on_plane(predictor, image, axis: int | None, index: int | None, limits, box=None, points=None,
                     point_labels=None, zoom: str = "auto") -> RegionMask:
    """A box/point prompt on one plane of an `Image` (``axis`` held at ``index``; None for 2-D images), in
    the plane's own pixels: the full-image recipe (`planes.take_plane`) or, where the ``zoom`` policy says
    so, crops read from ``image.array`` alone. ``limits``: the display window of grey images (None: the
    image's default, see `default_limits`). The widget and `napari_medseg.segment` both prompt this way."""
    from .planes import square_scale, take_plane, take_region

    hw = tuple(s for i, s in enumerate(image.spatial_shape) if i != axis) if axis is not None else \
        tuple(image.spatial_shape)
    scale = square_scale(image, axis)
    seen = (hw[0] * scale[0], hw[1] * scale[1])
    points = None if points is None or not len(points) else np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels = None if points is None else (np.ones(len(points)) if point_labels is None else np.asarray(point_labels))
    if not zoom_applies(zoom, seen, predictor.profile.size, box):
        plane = take_plane(image, axis, index, limits if limits is not None or image.is_rgb else
                           default_limits(image))
        predictor.set_image(plane.pixels)
        mask = predictor.predict(box=plane.box_to_pixels(box) if box is not None else None,
                                 points=plane.points_to_pixels(points) if points is not None else None,
                                 point_labels=labels)
        return RegionMask(plane.mask_to_plane(mask), Window(0, 0, *hw))
    if limits is None and not image.is_rgb:
        from .box2d import clip_box

        first = context_window(clip_box(box, hw), hw, predictor.profile.size, 0, scale)
        limits = default_limits(image, (axis, index, first.rows, first.cols))

    def read(window: Window, step: int):
        return take_region(image, axis, index, limits, window.rows, window.cols, step)

    return predict_zoomed(predictor, read, hw, box, points, labels, scale=scale, key=(axis, index, limits))
