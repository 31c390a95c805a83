"""Automatic 2-D models over images larger than memory: block by block into OME-Zarr labels (issue 21).

The image (any array-like: a lazily read OME-Zarr or pyramidal TIFF) is cut into blocks aligned to the label
chunks; each block is read with a halo of context around it, segmented by `predict_auto2d` (its own sliding
window, normalisation and arg-max), and only the block's centre is written into ``OUT.zarr/labels/NAME``
(`omezarr.write_zarr_labels`, chunk by chunk). At no time does more than one block's input, logits and labels
exist: never the full-resolution logits, never the full image.

Faithfulness: models whose normalisation is per pixel (nnU-Net's RGBTo01 for photos, VM-UNet's and LVM-Med's
per-slice resizing aside) give the whole-image result away from block edges; per-image statistics (nnU-Net's
z-score of the image, VM-UNet's min-max) are computed per block (with its halo), and resizing models (VM-UNet,
LVM-Med) resize each block instead of the whole image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MedsegError
from ..io.image import Image
from ..io.omezarr import LABEL_CHUNK, SaveReport, write_zarr_labels
from ..progress import Progress


class _Block:
    """A full-image-shaped array that holds one block's labels and zeros elsewhere (blocks not yet segmented)."""

    def __init__(self, shape, labels: np.ndarray, y: int, x: int):
        self.shape, self.dtype, self._labels, self._y, self._x = shape, labels.dtype, labels, y, x

    def __getitem__(self, key):
        ys, xs = key
        out = np.zeros((ys.stop - ys.start, xs.stop - xs.start), self.dtype)
        h, w = self._labels.shape
        y0, y1 = max(ys.start, self._y), min(ys.stop, self._y + h)
        x0, x1 = max(xs.start, self._x), min(xs.stop, self._x + w)
        if y1 > y0 and x1 > x0:
            out[y0 - ys.start:y1 - ys.start, x0 - xs.start:x1 - xs.start] = \
                self._labels[y0 - self._y:y1 - self._y, x0 - self._x:x1 - self._x]
        return out


def default_halo(loaded) -> int:
    """Context around each block: the model's tile (nnU-Net's patch) or 128 pixels."""
    patch = loaded.preprocessing.get("patch_size")
    return int(max(patch)) if patch else 128


def predict_auto2d_to_zarr(loaded, image: Image, out: str | Path, *, name: str = "segmentation",
                           block: int = 4 * LABEL_CHUNK, halo: int | None = None, progress=None, cancel=None,
                           **options) -> SaveReport:
    """Segment the 2-D ``image`` with the automatic 2-D model ``loaded`` block by block, writing the labels into the
    OME-Zarr ``out`` (the image's own OME-Zarr or a new labels container). ``options`` go to `predict_auto2d`
    (device, mirroring, batch_size, precision). Returns what the last block's save wrote, with
    ``chunks_written`` summed over all blocks."""
    from .auto2d import predict_auto2d

    if loaded.task != "auto2d":
        raise MedsegError(f"{loaded.family} is a {loaded.task} model, not an automatic 2-D model")
    if image.ndim != 2:
        raise MedsegError("Block-by-block segmentation takes 2-D images (whole slides, microscopy fields)")
    if block % LABEL_CHUNK:
        raise MedsegError(f"The block side must be a multiple of the label chunk ({LABEL_CHUNK})")
    halo = default_halo(loaded) if halo is None else halo
    h, w = image.spatial_shape
    names = dict(loaded.classes or {})
    grid = [(y, x) for y in range(0, h, block) for x in range(0, w, block)]
    steps = Progress(len(grid), "Segmenting blocks", progress, cancel)
    total, report = 0, None
    for y, x in grid:
        y1, x1 = min(y + block, h), min(x + block, w)
        ya, xa, yb, xb = max(y - halo, 0), max(x - halo, 0), min(y1 + halo, h), min(x1 + halo, w)
        pixels = np.asarray(image.array[ya:yb, xa:xb])
        part = image.with_array(pixels, channel_axis=image.channel_axis,
                                origin=tuple(o + s * i for o, s, i in zip(image.origin, image.spacing, (xa, ya))),
                                metadata={k: v for k, v in image.metadata.items() if k not in ("levels", "lazy")})
        labels = predict_auto2d(loaded, part, **options)[y - ya:y1 - ya, x - xa:x1 - xa]
        report = write_zarr_labels(_Block((h, w), labels, y, x), image, out, names, name=name,
                                   regions=[(slice(y, y1), slice(x, x1))], chunk=LABEL_CHUNK)
        total += report.chunks_written
        steps.step()
    report.chunks_written = total
    return report

