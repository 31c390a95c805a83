"""`write_labels`: a label map saved in its reference image's exact geometry, with label names.

NIfTI, NRRD and MetaImage carry the geometry themselves; PNG and TIFF keep it (with label names)
in the sidecar (`formats.sidecar_path`), NIfTI keeps label names there too, NRRD and MetaImage in
Slicer-style header keys. Files are written through `atomic.replacing`: the written temporary file is
read back (header, shape, type, every data byte present, compressed streams' checksums) before it
replaces the target, so a writer's silent short write (ITK's on a full disk) never replaces a file.
"""
from __future__ import annotations

import gzip
import re
import shutil
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
from .nifti import check_nifti_data, nifti_header
from .photo import write_png_labels
from .sidecar import names_to_header, sidecar_replaced_with
from .tiff import check_stored, write_tiff_labels

_SUPPORTED = ".nii.gz, .nii, .nrrd, .mha, .png or .tif"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk and its CRC: every PNG's last 12 bytes


def write_labels(labels: np.ndarray, like: Image, path: str | Path,
                 label_names: dict[int, str] | None = None) -> Path:
    """Write `labels` (shape `like.spatial_shape`) as NIfTI, NRRD, MetaImage, PNG or TIFF."""
    path = Path(path).expanduser()
    fmt = WRITE_FORMATS.get(suffix_of(path))
    if fmt is None:
        raise ImageWriteError(f"Cannot write labels as '{suffix_of(path) or path.name}': use {_SUPPORTED}")
    if not path.parent.is_dir():
        raise ImageWriteError(f"Folder {path.parent} does not exist")
    labels = _label_array(labels, like)
    if fmt == "png" and (labels.ndim != 2 or labels.dtype.itemsize > 2):
        problem = "are 3-D" if labels.ndim != 2 else "have values above 65535"
        raise ImageWriteError(f"PNG cannot hold these labels: they {problem}; use .nii.gz, .nrrd, .mha or .tif")
    names = {int(k): str(v) for k, v in (label_names or {}).items()}
    try:
        with ExitStack() as sidecar:
            if fmt in ("nifti", "png", "tiff"):  # written first, replaced after the labels
                sidecar.enter_context(sidecar_replaced_with(path, names, like.geometry() if fmt != "nifti" else None))
            verify = written_check(path, labels.shape, labels.dtype)
            with replacing(path, verify=verify) as temp:
                if fmt == "png":
                    write_png_labels(labels, temp)
                elif fmt == "tiff":
                    write_tiff_labels(labels, like, temp)
                else:
                    _write_with_sitk(labels, like, temp, names if fmt in ("nrrd", "metaimage") else {}, verify)
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


def _write_with_sitk(labels: np.ndarray, like: Image, path: Path, names: dict[int, str], verify) -> None:
    import SimpleITK as sitk

    img = sitk_from_array(labels, like)
    for key, value in names_to_header(names).items():
        img.SetMetaData(key, value)
    if not path.name.lower().endswith(".gz"):
        sitk.WriteImage(img, str(path), useCompression=True)
        return
    # ITK's NIfTI writer ignores the compression level and deflates at zlib's default, 4x slower than
    # level 1 for a 512 x 512 x 300 label map: write it plain, then gzip it here at level 1
    plain = path.with_name(path.name[:-3])
    try:
        sitk.WriteImage(img, str(plain))
        verify(plain)  # before compressing it: ITK's short writes do not raise
        with open(plain, "rb") as source, gzip.open(path, "wb", compresslevel=1) as target:
            shutil.copyfileobj(source, target, 1 << 22)
    finally:
        plain.unlink(missing_ok=True)


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
