"""Batch segmentation over cohorts: inputs expanded to cases, one labels file per case, a run manifest.

A failing case never stops the run: it is recorded with its error and listed at the end.
"""
from __future__ import annotations

import glob
import json
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import atomic_write_text
from .errors import MedsegError
from .progress import CancelCheck, ProgressCallback

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
LABEL_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "png", "tif")  # --format by suffix, as before


@dataclass
class Case:
    name: str
    source: Path  # file, or folder holding one DICOM series


@dataclass
class CaseResult:
    name: str
    source: str
    output: str
    status: str  # done, skipped, failed
    seconds: float = 0.0
    error: str | None = None
    labels_found: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what reading the image warned about


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES + (".dcm",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def expand_inputs(inputs: list[str]) -> list[Case]:
    """Files, folders (their images and DICOM series folders) and glob patterns, as named cases."""
    cases: list[Case] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise MedsegError(f"No input matches {item!r}")
        for match in matches:
            cases.extend(_cases_in(Path(match)))
    seen: dict[str, int] = {}
    for case in cases:  # unique output names
        count = seen.get(case.name, 0)
        seen[case.name] = count + 1
        if count:
            case.name = f"{case.name}_{count}"
    return cases


def _cases_in(path: Path) -> list[Case]:
    if path.is_file():
        return [Case(_stem(path), path)]
    if not path.is_dir():
        raise MedsegError(f"Input not found: {path}")
    from .io.omezarr import is_ome_zarr

    if is_ome_zarr(path):  # an OME-Zarr image is one case, not a folder of images
        return [Case(re.sub(r"(\.ome)?\.zarr$", "", path.name, flags=re.IGNORECASE) or path.name, path)]
    files = sorted(p for p in path.iterdir() if p.is_file())
    if any(_is_dicom_file(p) for p in files):
        return [Case(path.name, path)]
    cases = [Case(_stem(p), p) for p in files if p.name.lower().endswith(IMAGE_SUFFIXES)]
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        cases.extend(_cases_in(sub))
    return cases


def format_choices() -> tuple[str, ...]:
    """What --format takes: the formats' names (nifti, seg-nrrd, dicom-seg, ...) and the suffixes taken before."""
    from .io.label_formats import NAMES

    return NAMES + tuple(f for f in LABEL_FORMATS if f not in NAMES)


def output_path(case: Case, out_dir: Path, fmt: str | None) -> Path:
    from .io.label_formats import NAMES, default_suffix

    if fmt in NAMES:
        return out_dir / f"{case.name}{default_suffix(fmt)}"
    if fmt is None:
        name = case.source.name.lower()
        fmt = next((f for f in LABEL_FORMATS if name.endswith("." + f)), None)
        fmt = fmt or ("tif" if name.endswith(".tiff") else "png" if name.endswith((".jpg", ".jpeg", ".bmp")) else "nii.gz")
    if fmt not in LABEL_FORMATS:
        raise MedsegError(f"--format must be one of {', '.join(format_choices())}")
    return out_dir / f"{case.name}.{fmt}"


def run_cases(cases: list[Case], out_dir: Path, model: str, *, weights=None, device=None, fmt=None,
              overwrite=False, segment_kwargs: dict | None = None, on_case=None, load_options: dict | None = None,
              progress: ProgressCallback | None = None, cancel: CancelCheck | None = None,
              server=None) -> list[CaseResult]:
    """Segment every case in turn; ``on_case(result)`` is called after each one. ``server`` (a
    `server.client.Client`) runs each case there instead of loading ``model`` here."""
    import numpy as np

    from .io import read_image, write_labels
    from .io.label_formats import check_target
    from .models.load import load_model
    from .segmentation import segment

    loaded = None if server is not None else load_model(model, weights=weights, device=device, **(load_options or {}))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for case in cases:
        if cancel and cancel():
            break
        target = output_path(case, out_dir, fmt)
        start = time.perf_counter()
        if target.exists() and not overwrite:
            result = CaseResult(case.name, str(case.source), str(target), "skipped")
        else:
            read_warnings = []
            try:
                image = read_image(case.source)
                read_warnings = [str(w) for w in image.metadata.get("warnings", [])]
                check_target(image, target)  # e.g. DICOM-SEG of a non-DICOM case: fails before segmenting
                if server is not None:
                    with server.open(image) as session:
                        labels = session.segment(model, progress=progress, cancel=cancel, **(segment_kwargs or {}))
                    classes = session.classes
                else:
                    labels = segment(image, loaded, progress=progress, cancel=cancel, **(segment_kwargs or {}))
                    classes = loaded.classes
                write_labels(labels, image, target, label_names=classes or None)
                found = [int(v) for v in np.unique(labels) if v]
                result = CaseResult(case.name, str(case.source), str(target), "done", labels_found=found)
            except MedsegError as exc:
                result = CaseResult(case.name, str(case.source), str(target), "failed", error=str(exc))
            except Exception as exc:  # keep going past anything one case throws
                result = CaseResult(case.name, str(case.source), str(target), "failed", error=f"{type(exc).__name__}: {exc}")
            result.warnings = read_warnings
        result.seconds = round(time.perf_counter() - start, 3)
        results.append(result)
        if on_case:
            on_case(result)
    return results


def write_manifest(path: Path, model: str, weights_sha256: str | None, device: str, results: list[CaseResult],
                   seconds: float) -> None:
    from importlib.metadata import version

    from . import __version__

    def ver(name):
        try:
            return version(name)
        except Exception:
            return None

    manifest = {
        "napari-medseg": __version__,
        "model": model,
        "weights_sha256": weights_sha256,
        "device": device,
        "platform": platform.platform(),
        "packages": {p: ver(p) for p in ("torch", "numpy", "SimpleITK", "monai", "napari")},
        "seconds": round(seconds, 3),
        "counts": {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")},
        "cases": [asdict(r) for r in results],
    }
    try:
        atomic_write_text(path, json.dumps(manifest, indent=2))
    except OSError as exc:
        raise MedsegError(f"Cannot write the run manifest {path}: {exc.strerror or exc}") from None
