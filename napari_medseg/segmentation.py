"""`segment()`: the one function behind the widget, the CLI and scripts."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import MedsegError, PromptError
from .io.image import Image
from .progress import CancelCheck, ProgressCallback


MAX_LABEL = int(np.iinfo(np.uint32).max)  # the largest value io.write_labels stores


def as_image(image: Image | str | Path | np.ndarray) -> Image:
    """An `Image` from a path, an `Image`, or a bare array (unit spacing, RGB if it ends in 3 channels)."""
    if isinstance(image, Image):
        return image
    if isinstance(image, (str, Path)):
        from .io import read_image

        return read_image(image)
    lazy = all(hasattr(image, name) for name in ("shape", "dtype", "ndim", "__getitem__"))
    array = image if lazy else np.asarray(image)  # zarr/dask arrays stay unread until a crop is asked for
    rgb = array.ndim == 3 and array.shape[-1] == 3 and array.dtype == np.uint8
    ndim = array.ndim - rgb
    if ndim not in (2, 3):
        raise MedsegError(f"Expected a 2-D or 3-D image, got an array of shape {array.shape}")
    return Image(array, (1.0,) * ndim, (0.0,) * ndim, np.eye(ndim), modality="RGB" if rgb else "unknown",
                 intensity="rgb" if rgb else "raw", channel_axis=-1 if rgb else None)


def resident(image: Image) -> Image:
    """A lazily read image (OME-Zarr, pyramidal TIFF) loaded whole, once its size is known to fit in memory."""
    from .io.declared import check_memory

    name = image.path.name if image.path else "the image"
    check_memory(int(np.prod(image.array.shape)) * image.array.dtype.itemsize, name)
    return image.with_array(np.asarray(image.array), channel_axis=image.channel_axis)


def slice_index(value, image: Image | None, what: str) -> int:
    """The slice index of a prompt (``what``: "box", "point") along the first axis: a whole number inside the
    volume; 2-D images have none."""
    number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise PromptError(f"The {what}'s slice index must be a whole number, got {number:g}")
    if image is not None:
        if image.ndim == 2:
            raise PromptError(f"This 2-D image has no slices; give the {what} without a slice index (got {number:g})")
        depth = image.spatial_shape[0]
        if not 0 <= number < depth:
            raise PromptError(f"Slice {int(number)} is outside the volume (0..{depth - 1})")
    return int(number)


def check_prompts(image: Image | None, box: Sequence[float] | None = None,
                  points: Sequence[Sequence[float]] | None = None, point_labels: Sequence[int] | None = None,
                  task: str | None = None) -> None:
    """Refuse, before any model loads, prompts that would be silently reinterpreted: non-finite numbers,
    fractional or out-of-range slice indices, a slice index for a 2-D image (none for a volume), a box
    without area inside the image (for text-guided models, ``task`` "text2d", a click: a box of zero size
    whose centre lies in the image), points outside it. With ``image`` None only what needs no image is checked.
    """
    from .inference.box2d import check_points, clip_box

    sliced = False
    if box is not None:
        if len(box) not in (4, 5):
            raise PromptError(f"A box is x0,y0,x1,y1 or x0,y0,x1,y1,z; got {len(box)} numbers")
        if len(box) == 5:
            slice_index(box[4], image, "box")
            sliced = True
        values = np.asarray(box[:4], dtype=np.float64)
        if not np.isfinite(values).all():
            raise PromptError(f"A box needs four finite numbers (x0, y0, x1, y1), got {', '.join(map(str, box[:4]))}")
        if image is not None and task != "text2d":
            clip_box(values, image.spatial_shape[-2:])
        elif image is not None:
            h, w = image.spatial_shape[-2:]
            x, y = (values[0] + values[2]) / 2, (values[1] + values[3]) / 2
            if not (0 <= x <= w and 0 <= y <= h):
                raise PromptError(f"The box centre ({x:g}, {y:g}) lies outside the {w}x{h} image")
    if points:
        for point in points:
            if len(point) not in (2, 3):
                raise PromptError(f"A point is x,y or x,y,z; got {len(point)} numbers")
            if len(point) == 3:
                slice_index(point[2], image, "point")
                sliced = True
        hw = image.spatial_shape[-2:] if image is not None else None
        check_points([list(point[:2]) for point in points], hw, point_labels)
    if image is not None and image.ndim == 3 and (box is not None or points) and not sliced:
        raise PromptError("For a volume, give the slice index as the box's fifth number (x0,y0,x1,y1,z) "
                          "or the points' third (x,y,z)")


def segment(
    image: Image | str | Path | np.ndarray,
    model="lite-medsam",
    *,
    box: Sequence[float] | None = None,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    report: str | None = None,
    weights: str | Path | None = None,
    device: str | None = None,
    label: int = 1,
    propagate: bool = False,
    window: tuple[float, float] | None = None,
    structures: Sequence[int | str] | None = None,
    mirroring: bool | None = None,
    precision: str = "faithful",
    zoom: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    server=None,
    server_token: str | None = None,
) -> np.ndarray:
    """Segment ``image`` with ``model`` (a registry id or a `LoadedModel`) and return a label map.

    Box prompts are ``(x0, y0, x1, y1)`` in pixels of the slice, plus ``z`` (the slice index along
    the first axis) for volumes; points are ``(x, y[, z])`` with ``point_labels`` 1 (object) or 0
    (background). The result has ``image``'s spatial shape; prompted objects get value ``label``.
    ``structures`` keeps only those classes (names or label values) of automatic 3D models.
    ``mirroring`` (automatic 2-D models): None averages over the test-time flips the model's own predictor
    makes (nnU-Net's by default); False is the fast choice without them.
    ``device`` also runs a given `LoadedModel` there (default: where it was loaded).
    ``precision``: "faithful" (default: float32, the authors' results) or "fast" (reduced precision where
    the hardware has it; can change masks: see the README's precision section).
    ``zoom`` (box-prompted models): "auto" (default) predicts in a crop around the box, read from the image
    alone, where the whole slice would be shrunk more than 2x to fit the model's input, and keeps the
    full-image recipe elsewhere; "on" always zooms a box, "off" never (see `inference.zoom`).
    ``server``: a `medseg serve` URL (or a list: the least busy is used, or a `server.client.Client`) runs the
    same computation there with the server's installed weights and devices; ``server_token`` defaults to
    $MEDSEG_SERVER_TOKEN. The remote path imports no torch here.
    """
    if server is not None:
        return _segment_remote(image, model, server, server_token, weights, device, box=box, points=points,
                               point_labels=point_labels, report=report, label=label, propagate=propagate,
                               window=window, structures=structures, mirroring=mirroring, precision=precision,
                               zoom=zoom, progress=progress, cancel=cancel)
    from .inference.precision import precision_policy
    from .models.load import load_model
    from .models.loaded import LoadedModel
    from .models.registry import get_card

    from .inference.zoom import check_zoom

    precision = precision_policy(precision)
    check_zoom(zoom)
    img = as_image(image)
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 1 <= label <= MAX_LABEL:
        raise PromptError(f"label must be a whole number from 1 to {MAX_LABEL}, not {label!r}")
    task = model.task if isinstance(model, LoadedModel) else get_card(model).task
    check_prompts(img, box, points, point_labels, task)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights=weights, device=device)
    if img.ndim not in (2, 3):
        raise MedsegError(f"{img.ndim}-D images are not supported")
    run_on = device if device not in (None, "", "auto") else loaded.info.get("device")
    lazy = not isinstance(img.array, np.ndarray)  # read lazily (OME-Zarr, pyramidal TIFF)
    if lazy and (loaded.task != "box2d" or (img.ndim == 3 and propagate)):  # these recipes see it all
        img = resident(img)
    if loaded.task == "box2d":  # one plane, or crops of it, read as needed
        return _segment_box(img, loaded, box, points, point_labels, label, propagate, window, progress, cancel,
                            precision, zoom)
    if loaded.task == "auto2d":
        from .inference.auto2d import predict_auto2d

        return predict_auto2d(loaded, img, device=run_on, mirroring=mirroring, progress=progress, cancel=cancel,
                              precision=precision)
    if loaded.task == "auto3d":
        from .inference.auto3d import predict_auto3d

        return predict_auto3d(loaded, img, device=run_on, structures=structures, progress=progress, cancel=cancel,
                              precision=precision)
    if loaded.task == "text2d":
        from .inference.text2d import predict_text2d

        if box is None:
            raise PromptError("Text-guided models need a box (or click) that places the lesion crop")
        return predict_text2d(loaded, img, report or "", box=box, window=window, label=label, precision=precision)
    raise MedsegError(f"Unknown task {loaded.task!r}")


def _segment_remote(image, model, server, token, weights, device, *, progress, cancel, **kwargs) -> np.ndarray:
    from .inference.precision import precision_policy
    from .models.registry import get_card
    from .server.client import remote_segment

    if not isinstance(model, str):
        raise MedsegError("With a server, give the model as a registry id (the server loads its own weights)")
    if weights is not None:
        raise MedsegError("With a server, its installed weights are used; a local weights file cannot be given")
    if device not in (None, "", "auto"):
        raise MedsegError(f"With a server, the server picks the device (medseg serve --devices), not {device!r}")
    kwargs["precision"] = precision_policy(kwargs["precision"])
    label = kwargs["label"]
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 1 <= label <= MAX_LABEL:
        raise PromptError(f"label must be a whole number from 1 to {MAX_LABEL}, not {label!r}")
    img = as_image(image)
    check_prompts(img, kwargs["box"], kwargs["points"], kwargs["point_labels"], get_card(model).task)
    return remote_segment(img, model, server, token, progress=progress, cancel=cancel, **kwargs)


def _segment_box(img, loaded, box, points, point_labels, label, propagate, window, progress, cancel,
                 precision="faithful", zoom="auto"):
    from .inference.box2d import BoxPredictor
    from .inference.planes import resample_mask, take_plane
    from .inference.zoom import default_limits, predict_on_plane

    if box is None and not points:
        raise PromptError("Box-prompted models need a box (x0,y0,x1,y1[,z]) or points")
    z = None
    if box is not None:
        if len(box) not in (4, 5):
            raise PromptError(f"A box is x0,y0,x1,y1 or x0,y0,x1,y1,z; got {len(box)} numbers")
        z = int(box[4]) if len(box) == 5 else None
        box = tuple(float(v) for v in box[:4])
    pts, pt_labels = None, None
    if points:
        pts = np.array([p[:2] for p in points], dtype=float)
        pt_labels = np.array(point_labels if point_labels is not None else [1] * len(pts))
        zs = {int(p[2]) for p in points if len(p) > 2}
        if len(zs) > 1 or (z is not None and zs and zs != {z}):
            raise PromptError("All prompts of one segmentation must lie on the same slice")
        z = z if z is not None else (zs.pop() if zs else None)
    if img.ndim == 3 and z is None:
        raise PromptError("For a volume, give the slice index as the box's fifth number (x0,y0,x1,y1,z)")
    axis = 0 if img.ndim == 3 else None
    predictor = BoxPredictor(loaded, device=loaded.info.get("device"), precision=precision)
    region = predict_on_plane(predictor, img, axis, z, window, box, pts, pt_labels, zoom)
    labels = np.zeros(img.spatial_shape, dtype=np.min_scalar_type(label))  # pages outside the mask stay unwritten
    if img.ndim == 3 and propagate:
        limits = window or default_limits(img)
        planes = [take_plane(img, 0, i, limits) for i in range(img.spatial_shape[0])]
        seed = resample_mask(region.full(img.spatial_shape[1:]), planes[z].pixels.shape[:2])
        masks = predictor.propagate(np.stack([p.pixels for p in planes]), z, seed, progress=progress, cancel=cancel,
                                    zoom=zoom)
        labels[np.stack([p.mask_to_plane(m) for p, m in zip(planes, masks)])] = label
    else:
        plane = labels if img.ndim == 2 else labels[z]
        plane[region.window.rows, region.window.cols][region.mask] = label
    return labels


def plane_mask(predictor, img: Image, axis: int | None, index: int | None, limits, box=None, points=None,
               point_labels=None) -> np.ndarray:
    """The boolean mask, in the plane's own pixels, of a box and/or points on one plane of ``img``
    (``axis`` held fixed at ``index``; None for 2-D), seen through the display range ``limits``: what
    `segment()` computes, and the server's box requests with a warm ``predictor`` (a `BoxPredictor`)."""
    from .inference.planes import take_plane

    plane = take_plane(img, axis, index, limits)
    predictor.set_image(plane.pixels)
    mask = predictor.predict(box=plane.box_to_pixels(box) if box else None,
                             points=plane.points_to_pixels(points) if points is not None else None,
                             point_labels=point_labels)
    return plane.mask_to_plane(mask)
