"""`write_labels`: a label map saved in its reference image's exact geometry, with label names.

NIfTI, NRRD and MetaImage carry the geometry themselves; PNG and TIFF keep it (with label names)
in the `<name>.json` sidecar, NIfTI keeps label names there too and (with colours) in TotalSegmentator's
label-table extension (nifti_labels.py), NRRD and MetaImage in Slicer-style header keys. 3D Slicer's
seg.nrrd (seg_nrrd.py) and DICOM-SEG (dicom_seg.py) are written by their own modules. Files are written to a temporary name in the target folder, then renamed.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from ..errors import ImageWriteError, MedsegError
from ._sitk import itk_reason, sitk_from_array
from .formats import WRITE_FORMATS, suffix_of
from .image import Image
from .label_formats import CLINICAL, format_of, write_clinical
from .nifti_labels import write_labelled_nifti
from .photo import write_png_labels
from .segments import segments_of
from .sidecar import names_to_header, write_sidecar
from .tiff import write_tiff_labels

_SUPPORTED = ".nii.gz, .nii, .nrrd, .seg.nrrd, .mha, .dcm (DICOM-SEG), .png or .tif"


def write_labels(labels: np.ndarray, like: Image, path: str | Path,
                 label_names: dict[int, str] | None = None, *, label_colors: dict[int, tuple] | None = None,
                 fmt: str | None = None, dicom_seg_type: str = "BINARY") -> Path:
    """Write `labels` (shape `like.spatial_shape`) as NIfTI, NRRD, 3D Slicer seg.nrrd, MetaImage, DICOM-SEG,
    PNG or TIFF, chosen by `fmt` (see label_formats.NAMES) or the file name; colours (RGB) where the format
    keeps them. DICOM-SEG needs `like` read from DICOM; `dicom_seg_type` is BINARY or LABELMAP."""
    path = Path(path).expanduser()
    chosen = format_of(path, fmt)
    fmt = chosen if chosen in CLINICAL else WRITE_FORMATS.get(suffix_of(path))
    if fmt is None:
        raise ImageWriteError(f"Cannot write labels as '{suffix_of(path) or path.name}': use {_SUPPORTED}")
    if not path.parent.is_dir():
        raise ImageWriteError(f"Folder {path.parent} does not exist")
    labels = _label_array(labels, like)
    if fmt == "png" and (labels.ndim != 2 or labels.dtype.itemsize > 2):
        problem = "are 3-D" if labels.ndim != 2 else "have values above 65535"
        raise ImageWriteError(f"PNG cannot hold these labels: they {problem}; use .nii.gz, .nrrd, .mha or .tif")
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    if fmt in CLINICAL:  # their own modules: segment metadata, atomic writes
        return write_clinical(fmt, labels, like, path, names, label_colors, dicom_seg_type)
    temp = path.with_name(f".{uuid.uuid4().hex[:8]}.tmp-{path.name}")  # same suffix: same writer
    try:
        if fmt == "png":
            write_png_labels(labels, temp)
        elif fmt == "tiff":
            write_tiff_labels(labels, like, temp)
        elif fmt == "nifti":  # with the label table extension (names, colours), as TotalSegmentator writes it
            write_labelled_nifti(labels, like, temp, segments_of(labels, names, label_colors, given_only=True))
        else:
            _write_with_sitk(labels, like, temp, names)
        os.replace(temp, path)
        if fmt in ("nifti", "png", "tiff"):
            write_sidecar(path, names, like.geometry() if fmt != "nifti" else None)
    except MedsegError:
        raise
    except Exception as exc:  # OSError, SimpleITK RuntimeError, tifffile/Pillow errors
        reason = itk_reason(exc) if isinstance(exc, RuntimeError) else str(exc).splitlines()[0]
        raise ImageWriteError(f"Cannot write {path}: {reason}") from None
    finally:
        temp.unlink(missing_ok=True)
    return path


def _label_array(labels, like: Image) -> np.ndarray:
    """Validated labels in the smallest unsigned integer type that holds them."""
    labels = np.asarray(labels)
    if labels.shape != like.spatial_shape:
        raise ImageWriteError(f"Labels of shape {labels.shape} do not match the image's {like.spatial_shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):  # also catches NaN
        raise ImageWriteError("Labels must be whole numbers")
    if labels.dtype.kind not in "iuf":
        raise ImageWriteError(f"Labels must be integers, not {labels.dtype}")
    low, high = (labels.min(), labels.max()) if labels.size else (0, 0)
    if low < 0:
        raise ImageWriteError(f"Labels must not be negative (found {low})")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return labels.astype(dtype, copy=False)
    raise ImageWriteError(f"Label value {high} is too large (at most {np.iinfo(np.uint32).max})")


def _write_with_sitk(labels: np.ndarray, like: Image, path: Path, names: dict[int, str]) -> None:
    import SimpleITK as sitk

    img = sitk_from_array(labels, like)
    for key, value in names_to_header(names).items():
        img.SetMetaData(key, value)
    sitk.WriteImage(img, str(path), useCompression=True)
