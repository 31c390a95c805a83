"""`read_image(path)`: any supported file, DICOM folder or OME-Zarr -> `Image` with geometry and metadata.

Large images stay on disk: OME-Zarr folders and pyramidal (or big tiled) TIFFs come back with a dask array
(the full resolution) as `Image.array`, metadata "lazy" True and "levels" (every resolution, finest first);
see omezarr.py and tiff.py. They are not scanned for NaN.

metadata keys: "format" (nifti, nrrd, metaimage, dicom, tiff, png, jpeg, bmp), "original_dtype",
"warnings" (list of one-line strings, always present), "label_names" ({value: name}, when the
header or our JSON sidecar has them), "label_colors" ({value: (r, g, b)} 0-255, from a seg.nrrd, a NIfTI
label table, a NRRD/MetaImage header, our sidecar or a DICOM-SEG), "label_classes" ({value: the object's
class}, from the same headers, label table or sidecar) and per format: DICOM-SEG (format "dicom-seg": a label map of segment
numbers) "segmentation_type", "referenced_series_uids"; DICOM "series_uid", "series_key",
"series_description", "series_number", "num_files", "slice_geometry" (single slices), "gantry_tilt"
(a tilted series resampled onto an orthogonal grid: degrees, the source slices' shape, origin and offsets);
TIFF "axes", "format_detail" (ome/imagej), "physical_size" ({axis: [value, unit]}), "channel_names";
NIfTI/NRRD/MetaImage "fourth_axis" when a short 4th axis was read as channels.

Decisions: non-finite voxels (NaN, inf) are replaced by the lowest finite value, with a warning
(models and napari's contrast limits fail on NaN; an image that is all NaN is refused). A 4th axis
of up to 4 volumes is read as channels, longer ones (time series) are refused. Sheared grids are
refused, except a NIfTI whose sheared sform comes with a valid qform (read with the qform, warned), and a
gantry-tilted DICOM series, resampled onto an orthogonal grid as dcm2niix does (warned).
Before any reader allocates pixel memory, the size a header declares is checked against the data
present (compressed streams decompressed in bounded memory, checksums verified) and the memory
available (`declared.py`). Bilevel (bool) images are read as uint8.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ._sitk import execute, image_from_sitk
from .declared import check_itk_file
from .dicom import read_dicom_file, read_dicom_folder
from .dicom_series import list_dicom_series
from .formats import READ_FORMATS, has_dicom_preamble, suffix_of
from .image import Image
from .nifti import match_nibabel, checked_nifti, restore_non_finite
from .nifti_labels import read_label_table
from .omezarr import is_ome_zarr, read_ome_zarr
from .photo import read_photo
from .seg_nrrd import colors_from_header
from .sidecar import classes_from_header, names_from_header, read_sidecar
from .tiff import read_tiff

__all__ = ["list_dicom_series", "read_image"]

_MODALITIES = {"CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT"}


def read_image(path: str | Path, series: str | int | None = None, *, progress=None, cancel=None) -> Image:
    """Read a NIfTI, NRRD, MetaImage, DICOM file or folder, TIFF, PNG, JPEG or BMP image.

    `series` picks a DICOM series in a folder by key, SeriesInstanceUID or index in
    `list_dicom_series(folder)`; by default the largest one is read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ImageReadError(f"{path} does not exist")
    if series is not None and not path.is_dir():
        raise ImageReadError(f"series={series!r} only applies to DICOM folders, not to {path.name}")
    try:
        if path.is_dir() and is_ome_zarr(path):
            image = read_ome_zarr(path)
        elif path.is_dir():
            image = read_dicom_folder(path, series, progress=progress, cancel=cancel)
        else:
            image = _read_file(path, progress, cancel)
    except PermissionError:
        raise ImageReadError(f"No permission to read {path}") from None
    return _finish(image, path)


def _read_file(path: Path, progress, cancel) -> Image:
    fmt = READ_FORMATS.get(suffix_of(path))
    if fmt is None and has_dicom_preamble(path):
        fmt = "dicom"
    if fmt is None:
        raise ImageReadError(
            f"Unsupported file type '{suffix_of(path) or path.name}': open NIfTI, NRRD, MetaImage (.mha/.mhd), "
            "DICOM (file or folder), TIFF, PNG, JPEG or BMP"
        )
    if fmt == "dicom":
        from .dicom_seg import is_dicom_seg, read_dicom_seg

        from .rtstruct import is_rtstruct

        if is_dicom_seg(path):
            return read_dicom_seg(path)
        if is_rtstruct(path):
            raise ImageReadError(f"{path.name} is an RTSTRUCT (contours without a grid of their own): put it on its "
                                 "image with 'medseg convert RTSTRUCT --like IMAGE -o labels.nii.gz'")
        return read_dicom_file(path, progress=progress, cancel=cancel)
    if fmt == "tiff":
        return read_tiff(path)
    if fmt in ("png", "jpeg", "bmp"):
        return read_photo(path, fmt)
    return _read_with_sitk(path, fmt, progress, cancel)


def _read_with_sitk(path: Path, fmt: str, progress, cancel) -> Image:
    import SimpleITK as sitk

    nii = checked_nifti(path) if fmt == "nifti" else None
    if nii is None:
        check_itk_file(path, fmt)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    img = execute(reader, path.name, progress, cancel)
    fields, warnings = _header_fields(img)
    modality = _modality(fields)
    metadata = {"format": fmt, "warnings": warnings, "label_names": names_from_header(fields)}
    colors, classes = colors_from_header(fields), classes_from_header(fields)
    if nii is not None:
        names, colors, classes = read_label_table(nii)
        metadata["label_names"] = metadata["label_names"] or names
    if colors:
        metadata["label_colors"] = colors
    if classes:
        metadata["label_classes"] = classes
    image = image_from_sitk(img, path.name, modality=modality, intensity="HU" if modality == "CT" else "raw",
                            metadata=metadata)
    if nii is None:
        metadata["original_dtype"] = str(image.array.dtype)
        return image
    metadata["original_dtype"] = str(nii.header.get_data_dtype())
    restore_non_finite(image, nii)
    return match_nibabel(image, nii)


def _header_fields(img) -> tuple[dict[str, str], list[str]]:
    """The header's key/value fields; keys that are not UTF-8 cannot be looked up and are skipped."""
    fields, skipped = {}, []
    for key in img.GetMetaDataKeys():
        try:
            fields[key] = img.GetMetaData(key)
        except (TypeError, UnicodeError):  # SWIG cannot pass a key holding undecodable bytes back
            skipped.append(key.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return fields, [f"header field {key!r} is not UTF-8 text; ignored" for key in skipped]


def _modality(fields: dict[str, str]) -> str:
    """Modality from a MetaImage 'Modality = MET_MOD_CT' field or a 'modality' header key."""
    for key, value in fields.items():
        if key.lower() == "modality":
            value = value.strip().upper().removeprefix("MET_MOD_")
            if value in _MODALITIES:
                return value
    return "unknown"


def _finish(image: Image, path: Path) -> Image:
    """Steps shared by all formats: non-finite voxels, sidecar label names and geometry, path."""
    metadata = image.metadata
    metadata.setdefault("warnings", [])
    if metadata.get("lazy"):  # OME-Zarr, pyramidal TIFF: pixels stay on disk (not scanned for NaN)
        image.path = path
        return image
    if image.array.dtype == bool:  # bilevel TIFFs: intensities, not truth values, for every model
        image.array = image.array.astype(np.uint8)
        metadata["original_dtype"] = "bool"
    if image.array.dtype.kind == "f":
        bad = ~np.isfinite(image.array)
        if bad.all():
            raise ImageReadError(f"{path.name} holds no finite values (all NaN or infinite)")
        if bad.any():
            lowest = image.array[~bad].min()
            image.array = np.where(bad, lowest, image.array)
            metadata["warnings"].append(f"{int(bad.sum())} NaN/infinite voxels replaced by {lowest:g}")
    sidecar = read_sidecar(path) if path.is_file() else {}
    if not metadata.get("label_names"):
        metadata["label_names"] = sidecar.get("label_names", {})
    for key in ("label_colors", "label_classes"):  # the header's or label table's come first
        if sidecar.get(key) and not metadata.get(key):
            metadata[key] = sidecar[key]
    geometry = sidecar.get("geometry")
    if metadata["format"] in ("png", "tiff") and geometry and tuple(geometry["shape"]) == image.spatial_shape:
        image.spacing, image.origin = tuple(geometry["spacing"]), tuple(geometry["origin"])
        image.direction = np.reshape(geometry["direction"], (image.ndim, image.ndim))
    if not metadata["label_names"]:
        del metadata["label_names"]
    image.path = path
    return image
