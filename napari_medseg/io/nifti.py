"""NIfTI checks SimpleITK skips: truncated data and orientation that differs from nibabel's."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from .declared import DataPart, check_memory, check_present
from .image import Image

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def checked_nifti(path: Path):
    """nibabel's lazily loaded image (header only), after checking the file holds all its voxels.

    SimpleITK silently fills missing voxels of a truncated .nii/.nii.gz with zeros.
    """
    nii = nifti_header(path)
    voxel_bytes = check_nifti_data(path, nii)
    check_memory(voxel_bytes, f"NIfTI {path.name}", copies=2)  # ITK's buffer and numpy's copy of it
    return nii


def nifti_header(path: Path):
    import nibabel as nib

    try:
        nii = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise ImageReadError(f"Cannot read NIfTI {path.name}: {exc}".splitlines()[0]) from None
    if int(nii.header["sizeof_hdr"]) == 540:
        raise ImageReadError(f"{path.name} is NIfTI-2, which SimpleITK cannot read; save it as NIfTI-1")
    return nii


def check_nifti_data(path: Path, nii, *, full: bool = True) -> int:
    """Refuse a file that holds fewer voxel bytes than its header declares; the declared voxel bytes.

    A .nii.gz stream is decompressed and its CRC checked (ITK trusts the trailer); `full=False` (a
    file just written) only checks that the stream ends in a trailer stating the right length.
    """
    header = nii.header
    voxel_bytes = int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    # the file's vox_offset (a loaded image's header copy reads 0); extensions lie between header and data
    offset = int(getattr(nii.dataobj, "offset", header.get_data_offset()))
    if header["magic"] == b"n+1":  # single file: the data follow the 352-byte header (ITK writes vox_offset 0)
        offset = max(offset, 352)
    encoding = "gzip" if path.name.lower().endswith(".gz") else "raw"
    check_present([DataPart(path, 0, encoding)], offset + voxel_bytes, f"NIfTI {path.name}", full=full)
    return voxel_bytes


def match_nibabel(image: Image, nii) -> Image:
    """Make a 3-D image's geometry agree with nibabel's affine (sform before qform).

    ITK sometimes prefers the qform where nibabel, FSL and SPM use the sform; the label files we
    write must line up in both worlds, so nibabel's choice wins unless it is sheared, which neither
    SimpleITK nor a direction matrix can represent (then ITK's qform reading stays, with a warning).
    """
    if image.ndim != 3 or np.allclose(image.affine, nii.affine, atol=1e-4):
        return image
    matrix = _LPS_FROM_RAS @ nii.affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / spacing
    warnings = image.metadata.setdefault("warnings", [])
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        warnings.append("the NIfTI sform is sheared; used the qform orientation instead")
        return image
    codes = f"sform_code={int(nii.header['sform_code'])}, qform_code={int(nii.header['qform_code'])}"
    warnings.append(f"SimpleITK and nibabel disagree on this NIfTI's orientation ({codes}); used nibabel's")
    return image.with_array(image.array, image.channel_axis, spacing=tuple(spacing),
                            origin=tuple(_LPS_FROM_RAS @ nii.affine[:3, 3]), direction=direction)


def restore_non_finite(image: Image, nii) -> None:
    """ITK reads NaN and infinite NIfTI voxels as 0 (water, in CT); mark them NaN again.

    Only float files can hold them; those are read a second time through nibabel to find them.
    """
    if nii.header.get_data_dtype().kind != "f":
        return
    bad = ~np.isfinite(np.asanyarray(nii.dataobj))
    if not bad.any():
        return
    spatial = min(bad.ndim, 3)
    bad = bad.reshape(bad.shape[:spatial] + tuple(size for size in bad.shape[spatial:] if size > 1))
    bad = bad.transpose(tuple(reversed(range(spatial))) + tuple(range(spatial, bad.ndim)))
    if bad.shape == image.array.shape:
        image.array[bad] = np.nan
