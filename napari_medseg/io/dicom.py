"""DICOM reading with SimpleITK: a series stack from a folder, or a single file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from ._sitk import execute, image_from_sitk
from .declared import check_memory
from .dicom_series import Slice, read_header, scan_folder, select_stack, slice_of
from .formats import has_dicom_preamble
from .image import Image

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def read_dicom_folder(folder: Path, series: str | int | None = None, *, progress=None, cancel=None) -> Image:
    stacks = scan_folder(folder, progress, cancel)
    stack, slices = select_stack(stacks, series, folder)
    if len(slices) == 1:
        image = read_dicom_file(stack.files[0], progress=progress, cancel=cancel)
    else:
        image = _read_stack(slices, f"series {stack.key}", progress, cancel)
    image.metadata.update(series_uid=stack.uid, series_key=stack.key, series_description=stack.description,
                          series_number=stack.number, num_files=stack.num_files)
    if stack.note:
        files = sum(info.num_files for info, _ in stacks if info.uid == stack.uid)
        image.metadata["warnings"].append(f"series {stack.note}; read stack {stack.key} ({stack.num_files} of "
                                          f"{files} files; pick another with series=)")
    return image


def check_slices(slices: list[Slice], what: str) -> None:
    """Every file holds the pixel data its header declares, and all of them fit in memory."""
    for item in slices:
        item.check_pixel_data()
    check_memory(sum(item.pixel_bytes[1] for item in slices), what, copies=2)  # ITK's buffer and numpy's copy


def _read_stack(slices: list[Slice], what: str, progress, cancel) -> Image:
    import SimpleITK as sitk

    check_slices(slices, what)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in slices])
    if len({s.rescale for s in slices}) > 1:  # e.g. PET: per-slice slopes need a float volume
        reader.SetOutputPixelType(sitk.sitkFloat32)
    img = execute(reader, what, progress, cancel)
    first = slices[0]
    warnings = []
    offsets = None
    if first.position is not None:
        row, col, normal = np.array(first.orientation[:3]), np.array(first.orientation[3:]), first.normal
        steps = np.diff([s.position for s in slices], axis=0)
        along = steps @ normal
        # ITK keeps the slice normal as third axis; a tilted gantry also shifts slices in-plane
        shift = np.linalg.norm(steps - np.outer(along, normal), axis=1).max()
        if shift > 0.01 * max(float(np.median(along)), 1e-6) + 0.01:
            spacing = img.GetSpacing()
            moved = np.array([s.position for s in slices]) - first.position
            offsets = np.column_stack([moved @ col / spacing[1], moved @ row / spacing[0]])  # (row, column) pixels
        img.SetOrigin(tuple(first.position))
        img.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
        img.SetSpacing(img.GetSpacing()[:2] + (float(np.median(along)),))
    else:
        warnings.append("no slice positions in the headers: slices stacked in InstanceNumber order")
    image = image_from_sitk(img, what, metadata={"format": "dicom", "warnings": warnings})
    if offsets is not None:
        moved = np.array(slices[-1].position) - first.position
        degrees = float(np.degrees(np.arctan2(np.linalg.norm(moved - (moved @ normal) * normal), moved @ normal)))
        image = untilt(image, offsets, degrees)
    return _finish(image, first)


def untilt(image: Image, offsets: np.ndarray, degrees: float, labels: bool = False) -> Image:
    """A gantry-tilted stack (slice k's pixels shifted in-plane by `offsets[k]` (row, column) pixels from
    slice 0's) resampled onto an orthogonal grid, as dcm2niix's `_Tilt` output: slice 0's in-plane axes and
    spacing, extended by whole pixels so that every slice's pixels fit, linear interpolation (`labels`: the
    nearest label), the volume's minimum outside the slices. metadata["gantry_tilt"] keeps where each source
    slice lies on that grid, so that DICOM-SEG and RTSTRUCT are written back on the tilted source slices."""
    from scipy.ndimage import map_coordinates

    low = np.floor(np.minimum(offsets.min(axis=0), 0) + 1e-3).astype(int)
    high = np.ceil(np.maximum(offsets.max(axis=0), 0) - 1e-3).astype(int)
    source = image.array
    shape = np.array(source.shape[1:3]) + high - low
    fill = source.min()
    grid = np.indices(tuple(shape), dtype=np.float64)
    out = np.empty((source.shape[0], *shape, *source.shape[3:]), source.dtype)
    for k, (plane, offset) in enumerate(zip(source, offsets)):
        coords = [grid[0] + low[0] - offset[0], grid[1] + low[1] - offset[1]]
        channels = plane[..., None] if plane.ndim == 2 else plane
        for c in range(channels.shape[-1]):
            values = map_coordinates(channels[..., c].astype(np.float64), coords, order=0 if labels else 1,
                                     mode="constant", cval=float(fill))
            target = out[k, ..., c] if plane.ndim == 3 else out[k]
            target[...] = np.rint(values) if source.dtype.kind in "iu" else values
    origin = np.array(image.origin) + image.direction[:, :2] @ (np.array(image.spacing[:2]) * low[::-1])
    rows, columns = source.shape[1:3]
    image.metadata["gantry_tilt"] = {"degrees": round(degrees, 4), "source_shape": list(source.shape[:3]),
                                     "source_origin": list(image.origin),
                                     "offsets": (offsets - low).round(6).tolist()}
    image.metadata["warnings"].append(
        f"gantry tilt of {degrees:.1f} degrees corrected by resampling onto an orthogonal grid (slices of "
        f"{shape[0]} x {shape[1]} pixels, were {rows} x {columns}; "
        + ("nearest label" if labels else f"linear interpolation, {fill} outside the slices, as dcm2niix") + ")")
    return image.with_array(out, image.channel_axis, origin=tuple(origin))


def _finish(image: Image, first: Slice) -> Image:
    """Modality, intensity meaning and a compact type: ITK widens rescaled CT to int32; int16 holds HU."""
    array, limits = image.array, np.iinfo(np.int16)
    wide = array.dtype.kind in "iu" and array.dtype.itemsize > 2 and array.size
    if wide and limits.min <= array.min() and array.max() <= limits.max:
        image.array = array.astype(np.int16, copy=False)
    image.modality = first.modality
    image.intensity = "rgb" if image.channel_axis is not None and image.array.shape[-1] == 3 else (
        "HU" if first.modality == "CT" else "raw")
    image.metadata.setdefault("original_dtype", first.stored_dtype)
    return image


def read_dicom_file(path: Path, *, progress=None, cancel=None) -> Image:
    """One DICOM file. A single slice becomes a 2-D image (see below); a multi-frame file a volume.

    Single slices are 2-D because every 2-D path (box-prompted and automatic 2-D models, PNG
    export, napari's 2-D view) takes (y, x) arrays, and a (1, y, x) volume would force each of them
    to squeeze it. The slice's full 3-D placement is kept in metadata["slice_geometry"]; the 2-D
    geometry is the in-plane part when the slice is axial, else the slice's own pixel grid.
    """
    import SimpleITK as sitk

    ds = read_header(path, force=True)
    try:  # pydicom decodes elements when they are first used and raises many types for damaged ones
        if ds is None or not has_dicom_preamble(path) and "Rows" not in ds:
            raise ImageReadError(f"{path.name} is not a DICOM file")
        directory = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS
        first = None if directory else slice_of(path, ds)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"DICOM {path.name} has a malformed header ({type(exc).__name__}: {exc})"
                             .splitlines()[0]) from None
    if directory:
        return read_dicom_folder(path.parent, progress=progress, cancel=cancel)
    if first is None:
        raise ImageReadError(f"{path.name} holds no image (no pixel data): a report, or a truncated file?")
    check_slices([first], path.name)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    img = execute(reader, path.name, progress, cancel, hint=" (truncated or corrupt DICOM?)")
    metadata = {"format": "dicom", "warnings": []}
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        metadata["slice_geometry"] = {"spacing": list(img.GetSpacing()), "origin": list(img.GetOrigin()),
                                      "direction": list(img.GetDirection())}
        img = _as_2d(img)
    image = image_from_sitk(img, path.name, metadata=metadata)
    return _finish(image, first)


def _as_2d(img):
    import SimpleITK as sitk

    direction = np.array(img.GetDirection()).reshape(3, 3)
    in_plane = direction[:2, :2]
    axial = np.allclose(in_plane.T @ in_plane, np.eye(2), atol=1e-4)
    flat = sitk.Extract(img, img.GetSize()[:2] + (0,), (0, 0, 0),
                        sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX if axial
                        else sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOIDENTITY)
    if not axial:
        flat.SetOrigin((0.0, 0.0))
    return flat
