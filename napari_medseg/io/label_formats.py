"""Label file formats by name (what `--format` takes) and by file name; the clinical formats' writers.

nifti (.nii.gz, .nii), nrrd (.nrrd), seg-nrrd (.seg.nrrd: 3D Slicer), mha (.mha), dicom-seg (.dcm),
rtstruct (.dcm, only when asked for: a .dcm name alone is a DICOM-SEG), png (.png), tiff (.tif, .tiff),
ome-zarr (.zarr: OME-Zarr labels, into the image's own OME-Zarr when that is the target). `fmt="seg-nrrd"` also writes Slicer's metadata into a plain `.nrrd`.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ImageWriteError

SUFFIXES = {
    "nifti": (".nii.gz", ".nii"), "nrrd": (".nrrd",), "seg-nrrd": (".seg.nrrd",), "mha": (".mha",),
    "dicom-seg": (".dcm",), "rtstruct": (".dcm",), "png": (".png",), "tiff": (".tif", ".tiff"),
    "ome-zarr": (".zarr",),
}
NAMES = tuple(SUFFIXES)
CLINICAL = ("dicom-seg", "rtstruct", "seg-nrrd")


def format_of(path: str | Path, fmt: str | None = None) -> str | None:
    """The format a label file at `path` is written in: `fmt` when given (checked against the suffix),
    else the suffix's; None for suffixes no format writes."""
    name = Path(path).name.lower().rstrip("/")
    matches = [(len(suffix), f) for f, suffixes in SUFFIXES.items() for suffix in suffixes if name.endswith(suffix)]
    # the longest suffix (.seg.nrrd before .nrrd); among equals the first listed (.dcm: dicom-seg)
    by_suffix = max(matches, key=lambda match: match[0])[1] if matches else None
    if fmt is None:
        return by_suffix
    if fmt not in SUFFIXES:
        raise ImageWriteError(f"Unknown label format {fmt!r}: use one of {', '.join(NAMES)}")
    if not name.endswith(SUFFIXES[fmt]) and not (fmt == "seg-nrrd" and name.endswith(".nrrd")):
        raise ImageWriteError(f"{fmt} files end in {' or '.join(SUFFIXES[fmt])}, not {Path(path).name}")
    return fmt


def default_suffix(fmt: str) -> str:
    return SUFFIXES[fmt][0]


def require_format(path: str | Path, fmt: str | None = None) -> str:
    """`format_of`, with a one-line error listing the suffixes for names that no format writes."""
    chosen = format_of(path, fmt)
    if chosen is None:
        raise ImageWriteError(f"Cannot write labels as {Path(path).name}: use a file ending in "
                              f"{', '.join(s for suffixes in SUFFIXES.values() for s in suffixes)}")
    return chosen


def check_target(like, path: str | Path, fmt: str | None = None) -> str:
    """Refuse, in one line and before any slow work, labels on `like` that cannot be written at `path`
    (unknown suffix, a DICOM-SEG without a DICOM source, 3-D PNG, 2-D seg.nrrd); returns the format."""
    chosen = require_format(path, fmt)
    if chosen == "dicom-seg":
        from .dicom_seg import source_files

        source_files(like)
    elif chosen == "rtstruct":
        from .rtstruct import check_source

        check_source(like)
    elif chosen == "seg-nrrd":
        from .seg_nrrd import check_like

        check_like(like)
    elif chosen == "ome-zarr":
        from .omezarr import check_zarr_target

        check_zarr_target(like, path)
    elif chosen == "png" and like.ndim != 2:
        raise ImageWriteError("PNG holds 2-D labels: use .nii.gz, .nrrd, .seg.nrrd, .mha, .dcm or .tif")
    return chosen


def write_clinical(fmt: str, labels, like, path: Path, names: dict[int, str], colors: dict | None,
                   dicom_seg_type: str = "BINARY", classes: dict[int, str] | None = None) -> Path:
    """DICOM-SEG, RTSTRUCT or seg.nrrd: each checks its input (one line) before any slow work and writes
    atomically; the objects' ``classes`` are kept by seg.nrrd."""
    from .segments import segments_of

    segments = segments_of(labels, names, colors, classes=classes)
    if fmt == "dicom-seg":
        from .dicom_seg import write_dicom_seg

        write_dicom_seg(labels, like, path, segments, dicom_seg_type)
    elif fmt == "rtstruct":
        from .rtstruct import write_rtstruct

        write_rtstruct(labels, like, path, segments)
    else:
        from .seg_nrrd import write_seg_nrrd

        write_seg_nrrd(labels, like, path, segments)
    return path
