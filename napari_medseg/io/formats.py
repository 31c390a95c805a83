"""File-name suffixes: which reader or writer a path goes to, and sidecar names."""
from __future__ import annotations

from pathlib import Path

READ_FORMATS = {
    ".nii": "nifti", ".nii.gz": "nifti",
    ".nrrd": "nrrd", ".nhdr": "nrrd",
    ".mha": "metaimage", ".mhd": "metaimage",
    ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom",
    ".tif": "tiff", ".tiff": "tiff",
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp",
}
WRITE_FORMATS = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".mha": "metaimage",
                 ".png": "png", ".tif": "tiff", ".tiff": "tiff"}
_COMPOUND = (".nii.gz", ".ome.tif", ".ome.tiff", ".seg.nrrd")


def suffix_of(path: str | Path) -> str:
    """Lower-case suffix that decides the format ('.nii.gz' counts as one suffix)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def sidecar_path(path: str | Path) -> Path:
    """`<file name>.json` next to a label file: 'seg.nii.gz' -> 'seg.nii.gz.json', 'seg.png' -> 'seg.png.json'.

    One sidecar per file: 'seg.png' and 'seg.nii.gz' in one folder keep their own names and geometry.
    """
    path = Path(path)
    return path.with_name(path.name + ".json")


def legacy_sidecar_path(path: str | Path) -> Path:
    """Where versions before one-sidecar-per-file put it: 'seg.nii.gz' -> 'seg.json', 'cells.ome.tif' -> 'cells.json'."""
    path = Path(path)
    name = path.name
    for suffix in _COMPOUND + (suffix_of(path),):
        if suffix and name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_name(name + ".json")


def shares_legacy_sidecar(path: str | Path) -> bool:
    """True when another image file in `path`'s folder had the same legacy sidecar (seg.png beside seg.nii.gz)."""
    path = Path(path)
    legacy = legacy_sidecar_path(path)
    stem = legacy.name[: -len(".json")]
    try:
        siblings = [p for p in path.parent.iterdir() if p.name.startswith(stem + ".")]
    except OSError:
        return False
    return any(p.name != path.name and suffix_of(p) in READ_FORMATS and legacy_sidecar_path(p) == legacy
               for p in siblings)


def has_dicom_preamble(path: Path) -> bool:
    """True for Part-10 DICOM files ('DICM' after the 128-byte preamble), whatever their name."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"
