"""`write_labels`: a label map saved in its reference image's exact geometry, with label names.

NIfTI, NRRD and MetaImage carry the geometry themselves; PNG and TIFF keep it (with label names)
in the sidecar (`formats.sidecar_path`), NIfTI keeps label names there too and (with colours) in
TotalSegmentator's label-table extension (nifti_labels.py), NRRD and MetaImage in Slicer-style header keys.
3D Slicer's seg.nrrd (seg_nrrd.py), DICOM-SEG (dicom_seg.py), RTSTRUCT and OME-Zarr labels (omezarr.py: chunk by
chunk, only changed chunks) are written by their own modules.
Files are written through `atomic.replacing`: the written temporary file is read back (header, shape, type,
every data byte present, compressed streams' checksums) before it replaces the target, so a writer's silent
short write (ITK's on a full disk) never replaces a file.
"""
from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import TEMP_MARK, replacing
from ..errors import ImageReadError, ImageWriteError, MedsegError
from ._sitk import itk_reason, sitk_from_array
from .declared import check_present, itk_header, metaimage_parts, nrrd_parts
from .formats import WRITE_FORMATS, suffix_of
from .image import Image
from .label_formats import CLINICAL, format_of, write_clinical
from .nifti import check_nifti_data, nifti_header
from .nifti_labels import write_labelled_nifti
from .photo import write_png_labels
from .segments import checked_color, segments_of
from .sidecar import names_to_header, sidecar_replaced_with
from .tiff import check_stored, write_tiff_labels

_SUPPORTED = ".nii.gz, .nii, .nrrd, .seg.nrrd, .mha, .dcm (DICOM-SEG), .png, .tif or .zarr (OME-Zarr labels)"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk and its CRC: every PNG's last 12 bytes


def write_labels(labels: np.ndarray, like: Image, path: str | Path,
                 label_names: dict[int, str] | None = None, *, label_colors: dict[int, tuple] | None = None,
                 label_classes: dict[int, str] | None = None, fmt: str | None = None,
                 dicom_seg_type: str = "BINARY") -> Path:
    """Write `labels` (shape `like.spatial_shape`) as NIfTI, NRRD, 3D Slicer seg.nrrd, MetaImage, DICOM-SEG,
    PNG or TIFF, chosen by `fmt` (see label_formats.NAMES) or the file name; colours (RGB) and the objects'
    classes where the format keeps them (headers, label table, sidecar; not yet DICOM-SEG and RTSTRUCT).
    DICOM-SEG needs `like` read from DICOM; `dicom_seg_type` is BINARY or LABELMAP."""
    path = Path(path).expanduser()
    chosen = format_of(path, fmt)
    fmt = chosen if chosen in CLINICAL + ("ome-zarr",) else WRITE_FORMATS.get(suffix_of(path))
    if fmt is None:
        raise ImageWriteError(f"Cannot write labels as '{suffix_of(path) or path.name}': use {_SUPPORTED}")
    if not path.parent.is_dir():
        raise ImageWriteError(f"Folder {path.parent} does not exist")
    if chosen == "ome-zarr":  # chunk by chunk from any array-like; only changed chunks are written
        from .omezarr import write_zarr_labels

        write_zarr_labels(labels, like, path, label_names, label_colors=label_colors)
        return path
    labels = _label_array(labels, like)
    if fmt == "png" and (labels.ndim != 2 or labels.dtype.itemsize > 2):
        problem = "are 3-D" if labels.ndim != 2 else "have values above 65535"
        raise ImageWriteError(f"PNG cannot hold these labels: they {problem}; use .nii.gz, .nrrd, .mha or .tif")
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    colors = {int(k): checked_color(v, int(k)) for k, v in (label_colors or {}).items()}
    classes = {int(k): str(v) for k, v in (label_classes or {}).items() if v}
    if fmt in CLINICAL:  # their own modules: segment metadata, atomic writes
        return write_clinical(fmt, labels, like, path, names, colors, dicom_seg_type, classes)
    try:
        with ExitStack() as sidecar:
            if fmt in ("nifti", "png", "tiff"):  # written first, replaced after the labels
                sidecar.enter_context(sidecar_replaced_with(path, names, like.geometry() if fmt != "nifti" else None,
                                                            colors, classes))
            with replacing(path, verify=written_check(path, labels.shape, labels.dtype)) as temp:
                if fmt == "png":
                    write_png_labels(labels, temp)
                elif fmt == "tiff":
                    write_tiff_labels(labels, like, temp)
                elif fmt == "nifti":  # with the label table extension (names, colours), as TotalSegmentator
                    write_labelled_nifti(labels, like, temp,
                                         segments_of(labels, names, colors, classes=classes, given_only=True))
                else:
                    _write_with_sitk(labels, like, temp, names_to_header(names, colors, classes))
    except MedsegError:
        raise
    except Exception as exc:  # OSError, SimpleITK RuntimeError, tifffile/Pillow errors
        reason = itk_reason(exc) if isinstance(exc, RuntimeError) else str(exc).splitlines()[0]
        raise ImageWriteError(f"Cannot write {path}: {reason}") from None
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


def _write_with_sitk(labels: np.ndarray, like: Image, path: Path, fields: dict[str, str]) -> None:
    import SimpleITK as sitk

    img = sitk_from_array(labels, like)
    for key, value in fields.items():
        img.SetMetaData(key, value)
    sitk.WriteImage(img, str(path), useCompression=True)


def written_check(target: Path, shape: tuple[int, ...], dtype, components: int = 1) -> Callable[[Path], None]:
    """A verify hook for `atomic.replacing`: the written file (a format of WRITE_FORMATS, by `target`'s
    suffix) is read back (header, shape, type, every data byte present: what a silent short write
    loses) before it may replace `target`."""
    fmt, dtype = WRITE_FORMATS[suffix_of(target)], np.dtype(dtype)

    def verify(temp: Path) -> None:
        try:
            if fmt == "png":
                _verify_png(temp, shape)
            elif fmt == "tiff":
                _verify_tiff(temp, shape, dtype)
            else:
                _verify_itk(temp, fmt, shape, components, dtype.itemsize)
        except ImageReadError as exc:
            reason = re.sub(re.escape(TEMP_MARK) + "[0-9a-f]+-", "", str(exc))
            raise ImageWriteError(f"Cannot write {target}: the written file is incomplete (disk full?): "
                                  f"{reason}") from None

    return verify


def _verify_itk(temp: Path, fmt: str, shape: tuple[int, ...], components: int, itemsize: int) -> None:
    size, found_components, found_itemsize = itk_header(temp, temp.name)
    if size != shape[::-1] or (found_components, found_itemsize) != (components, itemsize):
        raise ImageReadError(f"{temp.name} holds a {size} image of {found_components} x {found_itemsize}-byte "
                             "values per voxel")
    if fmt == "nifti":
        check_nifti_data(temp, nifti_header(temp), full=False)
    else:
        parts = nrrd_parts(temp) if fmt == "nrrd" else metaimage_parts(temp)
        check_present(parts, int(np.prod(shape)) * components * itemsize, temp.name, itemsize, full=False)


def _verify_png(temp: Path, shape: tuple[int, ...]) -> None:
    from PIL import Image as PILImage

    try:
        with PILImage.open(temp) as pil:
            size = pil.size
            pil.verify()  # every chunk's CRC, through the end chunk
    except Exception as exc:  # Pillow raises many types for damaged files
        raise ImageReadError(f"{temp.name} cannot be read back: {exc}".splitlines()[0]) from None
    if size != shape[::-1]:
        raise ImageReadError(f"{temp.name} holds a {size} image")
    with open(temp, "rb") as handle:  # verify() stops at the end chunk's name, before its CRC
        handle.seek(-len(_PNG_END), 2)
        if handle.read() != _PNG_END:
            raise ImageReadError(f"{temp.name} lacks its end chunk")


def _verify_tiff(temp: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    import tifffile

    try:
        with tifffile.TiffFile(temp) as tif:
            series = tif.series[0]
            found, found_dtype = tuple(s for s in series.shape if s > 1), series.dtype
            check_stored(series, tif.filehandle.size, temp.name)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ImageReadError(f"{temp.name} cannot be read back: {exc}".splitlines()[0]) from None
    if found != tuple(s for s in shape if s > 1) or found_dtype != dtype:
        raise ImageReadError(f"{temp.name} holds a {found} {found_dtype} image")
