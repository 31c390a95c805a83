"""`convert_labels`: a label file re-written in another format on a reference image's grid.

An RTSTRUCT's contours are filled on the image's slices (rtstruct.py).
Labels already on the image's grid (same shape, spacing, origin and axes within 1e-3 mm) are written as
they are; labels on another grid of the same patient space (e.g. a NIfTI from dcm2niix, flipped to RAS
order) are resampled onto it by nearest neighbour, so each written voxel takes the label at its centre.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from .image import Image

_SAME_GRID_MM = 1e-3


def same_grid(a: Image, b: Image) -> bool:
    return (a.spatial_shape == b.spatial_shape and np.allclose(a.spacing, b.spacing, atol=_SAME_GRID_MM)
            and np.allclose(a.origin, b.origin, atol=_SAME_GRID_MM)
            and np.allclose(a.direction, b.direction, atol=1e-6))


def on_grid(labels: Image, like: Image) -> np.ndarray:
    """`labels`' array on `like`'s grid: as it is when the grids agree, else resampled (nearest neighbour)."""
    if labels.channel_axis is not None:
        raise ImageReadError("The labels file has several channels: a label map has one")
    if same_grid(labels, like):
        return labels.array
    if labels.ndim != like.ndim:
        raise ImageReadError(f"The labels are {labels.ndim}-D and the image {like.ndim}-D: they cannot share a grid")
    import SimpleITK as sitk

    from ._sitk import sitk_from_array

    source = sitk_from_array(labels.array, labels)
    reference = sitk_from_array(np.zeros(like.spatial_shape, np.uint8), like)
    resampled = sitk.Resample(source, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              source.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def convert_labels(labels: str | Path | Image, like: str | Path | Image, out: str | Path, *,
                   fmt: str | None = None, label_names: dict[int, str] | None = None,
                   label_colors: dict[int, tuple] | None = None, dicom_seg_type: str = "BINARY") -> Path:
    """Write the label map `labels` (a file or an `Image`) on `like`'s grid at `out` (format from `fmt` or
    the name). Names and colours: the given ones, else those the labels file carries."""
    from .label_formats import check_target
    from .read import read_image
    from .write import write_labels

    like = like if isinstance(like, Image) else read_image(like)
    check_target(like, out, fmt)
    if not isinstance(labels, Image):
        from .rtstruct import is_rtstruct, read_rtstruct_onto

        labels = read_rtstruct_onto(Path(labels), like) if is_rtstruct(Path(labels)) else read_image(labels)
    references, series = labels.metadata.get("referenced_series_uids"), like.metadata.get("series_uid")
    if references and series and series not in references:
        raise ImageReadError(f"The DICOM-SEG references series {', '.join(references)}, not the image's series "
                             f"{series}: give --like the series it was drawn on")
    names = label_names if label_names is not None else labels.metadata.get("label_names")
    colors = label_colors if label_colors is not None else labels.metadata.get("label_colors")
    return write_labels(on_grid(labels, like), like, out, names, label_colors=colors, fmt=fmt,
                        dicom_seg_type=dicom_seg_type)
