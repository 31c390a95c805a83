"""Evaluate predicted label maps against ground truth: match cases, measure, tabulate, export.

Cases are matched by file name without its image extension (``liver_003.nii.gz`` <->
``liver_003.nii.gz`` or ``liver_003.nrrd``); two single files are one case whatever their names.
Classes: by default every non-zero voxel is foreground (binary masks stored as 0/1 or 0/255 both
work; JPEG masks, being lossy, count pixels >= 128); ``labels=[1, 2]`` or ``{"liver": 1}`` measures
those label values; ``labels="all"`` measures every non-zero value found in any prediction or GT.
Classes given by value take their names from the GT's label names (header or sidecar) when it has
them. Metric definitions: `metrics`.

JSON output is strict JSON: NaN (undefined) is written as null and infinity as the string "inf";
CSV and JSON values are rounded to six decimals.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..errors import Cancelled, ImageReadError, MedsegError
from ..progress import CancelCheck, Progress, ProgressCallback
from .metrics import METRICS, class_metrics, empty_metrics, summarize

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
PIXEL_FORMATS = ("png", "jpeg", "bmp", "tiff")  # their spacing is pixels unless a sidecar or tag says otherwise
JPEG_THRESHOLD = 128
ANY_NONZERO = None  # class selector: every non-zero voxel


def case_name(path: Path) -> str:
    """File name without its image extension (``.nii.gz`` counts as one)."""
    lower = path.name.lower()
    for suffix in LABEL_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _label_files(path: Path) -> dict[str, Path]:
    if path.is_file():
        return {case_name(path): path}
    if not path.is_dir():
        raise ImageReadError(f"{path} does not exist")
    files: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        if file.is_file() and not file.name.startswith(".") and file.name.lower().endswith(LABEL_SUFFIXES):
            name = case_name(file)
            if name in files:
                raise ImageReadError(f"{path} holds two files for case {name!r}: {files[name].name} and {file.name}")
            files[name] = file
    if not files:
        raise ImageReadError(f"{path} holds no label files ({', '.join(LABEL_SUFFIXES)})")
    return files


def match_cases(pred: Path | str, gt: Path | str) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """``(name, prediction, GT)`` pairs, GT cases without prediction, predictions without GT."""
    pred, gt = Path(pred), Path(gt)
    if pred.is_file() and gt.is_file():
        return [(case_name(gt), pred, gt)], [], []
    preds, gts = _label_files(pred), _label_files(gt)
    pairs = [(name, preds[name], gts[name]) for name in gts if name in preds]
    missing = [name for name in gts if name not in preds]
    unmatched = [name for name in preds if name not in gts]
    if not pairs:
        raise MedsegError(
            f"no prediction in {pred} matches a ground-truth case in {gt} by file name "
            f"(GT e.g. {next(iter(gts))!r}, prediction e.g. {next(iter(preds))!r})"
        )
    return pairs, missing, unmatched


def label_array(image, role: str) -> np.ndarray:
    """The label map of an `Image`; colour masks are accepted when all colour channels agree."""
    array = np.asarray(image.array)
    if image.channel_axis is not None:
        channels = np.moveaxis(array, image.channel_axis, -1)
        if channels.shape[-1] in (2, 4):  # grey+alpha, RGBA: alpha is not a label
            channels = channels[..., :-1]
        if not all(np.array_equal(channels[..., 0], channels[..., c]) for c in range(1, channels.shape[-1])):
            name = image.path.name if image.path else "image"
            raise ImageReadError(f"{role} {name} is a colour image, not a label map: save masks with one channel")
        array = channels[..., 0]
    if image.metadata.get("format") == "jpeg":
        array = (array >= JPEG_THRESHOLD).astype(np.uint8)
    return array


def check_same_grid(pred, gt, pred_shape: tuple, gt_shape: tuple) -> None:
    """Raise `MedsegError` unless prediction and GT share shape, spacing, origin and direction."""
    if pred_shape != gt_shape:
        raise MedsegError(f"prediction shape {pred_shape} differs from ground truth shape {gt_shape}")
    spacing_tol = 1e-2 * min(gt.spacing)  # a hundredth of a voxel
    checks = (
        ("spacing", pred.spacing, gt.spacing, np.allclose(pred.spacing, gt.spacing, rtol=1e-4, atol=1e-6)),
        ("origin", pred.origin, gt.origin, np.allclose(pred.origin, gt.origin, rtol=0, atol=spacing_tol)),
        ("direction", pred.direction.ravel(), gt.direction.ravel(),
         np.allclose(pred.direction, gt.direction, rtol=0, atol=1e-4)),
    )
    for what, pred_value, gt_value, same in checks:
        if not same:
            raise MedsegError(
                f"prediction {what} {_numbers(pred_value)} differs from ground truth {what} {_numbers(gt_value)}"
            )


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _units(image, ndim: int) -> tuple[str, str]:
    """(distance unit, volume unit): pixels for photo formats without physical spacing."""
    if image.metadata.get("format") in PIXEL_FORMATS and all(s == 1.0 for s in image.spacing):
        return "px", "px" if ndim == 2 else "voxels"
    return "mm", f"mm^{ndim}"


def _nonzero_values(array: np.ndarray) -> list:
    return [v.item() for v in np.unique(array) if v != 0]


@dataclass
class CaseResult:
    name: str
    pred_path: Path
    gt_path: Path
    spacing: tuple[float, ...]  # array axis order (z, y, x)
    distance_unit: str
    volume_unit: str
    n_voxels: int
    metrics: dict[str, dict[str, float]]  # class name -> metric -> value
    label_names: dict[int, str] = field(default_factory=dict)  # from the GT's header or sidecar


@dataclass
class Evaluation:
    """Per-case per-class metrics of one prediction set, with what could not be evaluated."""
    pred: Path
    gt: Path
    classes: dict[str, int | None]  # class name -> label value (None: every non-zero voxel)
    nsd_tolerance: float
    cases: list[CaseResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # GT cases without a prediction
    unmatched: list[str] = field(default_factory=list)  # predictions without GT
    failed: dict[str, str] = field(default_factory=dict)  # case -> why it could not be evaluated
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what reading the label maps warned about

    @property
    def complete(self) -> bool:
        return not (self.missing or self.failed)

    @property
    def distance_unit(self) -> str:
        return "/".join(sorted({c.distance_unit for c in self.cases})) or "mm"

    @property
    def volume_unit(self) -> str:
        return "/".join(sorted({c.volume_unit for c in self.cases})) or "mm^3"

    def values(self, class_name: str, metric: str) -> list[float]:
        return [case.metrics[class_name][metric] for case in self.cases]

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """class -> metric -> {mean, sd, median, n}; NaN left out, inf kept (see `metrics`)."""
        return {name: {m: summarize(self.values(name, m)) for m in METRICS} for name in self.classes}

    def rows(self) -> list[dict]:
        """One flat row per case and class."""
        return [
            {"case": case.name, "class": name, "label": "non-zero" if label is None else label,
             **case.metrics[name], "distance_unit": case.distance_unit, "volume_unit": case.volume_unit}
            for case in self.cases for name, label in self.classes.items()
        ]

    def to_dict(self) -> dict:
        """JSON-ready: per-case per-class values keyed by case name, the summary and the conventions."""
        return _json_safe({
            "pred": str(self.pred), "gt": str(self.gt),
            "classes": {n: "non-zero" if v is None else v for n, v in self.classes.items()},
            "nsd_tolerance": self.nsd_tolerance, "distance_unit": self.distance_unit,
            "volume_unit": self.volume_unit, "conventions": CONVENTIONS,
            "cases": {
                case.name: {"pred": str(case.pred_path), "gt": str(case.gt_path), "spacing": list(case.spacing),
                             "metrics": case.metrics}
                for case in self.cases
            },
            "summary": self.summary(),
            "missing_predictions": self.missing, "unmatched_predictions": self.unmatched,
            "failed": self.failed, "notes": self.notes, "warnings": self.warnings,
        })

    def write_json(self, path: Path | str) -> Path:
        return atomic_write_json(path, self.to_dict())

    def write_csv(self, path: Path | str) -> Path:
        fields = ["case", "class", "label", *METRICS, "distance_unit", "volume_unit"]
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: _rounded(v) if isinstance(v, float) else v for k, v in row.items()} for row in self.rows())
        return atomic_write_text(path, table.getvalue())


CONVENTIONS = (
    "Dice and IoU are NaN when prediction and GT are both empty (nnU-Net) and NaN values are left out of "
    "summaries; when only one is empty Dice = IoU = NSD = 0 and HD95 = ASSD = inf (MONAI's distance to an "
    "empty surface), kept in summaries without capping. HD95 = max of the two directed 95th percentiles of "
    "surface distances (MONAI compute_hausdorff_distance, percentile=95). ASSD = mean of the pooled distances "
    "of both directions. NSD = share of surface voxels of both masks within the tolerance. SD is the sample "
    "SD (ddof=1). In JSON, null means NaN and \"inf\" means infinity."
)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, float):
        return _rounded(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _rounded(value: float) -> float:
    """Six decimals: below any meaningful precision, and free of float32 noise (1.4142135381698608)."""
    return round(value, 6) if math.isfinite(value) else value


def parse_classes(labels) -> dict[str, int | None] | str:
    """None -> binary foreground; "all"; ints; or a name -> label mapping."""
    if labels is None:
        return {"foreground": ANY_NONZERO}
    if isinstance(labels, str):
        if labels != "all":
            raise MedsegError(f"labels must be 'all', label values or a name -> value mapping, got {labels!r}")
        return "all"
    pairs = labels.items() if isinstance(labels, Mapping) else ((str(v), v) for v in labels)
    classes = {}
    for name, value in pairs:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise MedsegError(f"label values are positive integers, got {value!r}")
        classes[str(name)] = int(value)
    if not classes:
        raise MedsegError("no labels to evaluate")
    return classes


def _found_classes(pred: np.ndarray, gt: np.ndarray) -> dict[str, int]:
    values = sorted(set(_nonzero_values(pred)) | set(_nonzero_values(gt)))
    if any(float(v) != int(v) for v in values):
        raise MedsegError("label map holds non-integer values; pass the labels to evaluate")
    return {str(int(v)): int(v) for v in values}


def evaluate_case(name: str, pred_path: Path, gt_path: Path, classes: dict[str, int | None] | str,
                  nsd_tolerance: float, warnings: list[str] | None = None) -> tuple[CaseResult, list[str]]:
    """Read one pair, check it shares a grid and measure it; also returns notes on it. What reading the
    files warned about is appended to ``warnings``, even when the case then fails."""
    from ..io import read_image

    def read(path: Path, role: str):
        image = read_image(path)
        if warnings is not None:
            warnings.extend(f"{name}: {role} {path.name}: {message}" for message in image.metadata.get("warnings", []))
        return image

    gt_image, pred_image = read(gt_path, "ground truth"), read(pred_path, "prediction")
    gt, pred = label_array(gt_image, "ground truth"), label_array(pred_image, "prediction")
    check_same_grid(pred_image, gt_image, pred.shape, gt.shape)
    spacing = tuple(gt_image.spacing[::-1])
    notes = []
    if classes == "all":
        classes = _found_classes(pred, gt)
    elif list(classes.values()) == [ANY_NONZERO]:
        for role, array in (("ground truth", gt), ("prediction", pred)):
            values = _nonzero_values(array)
            if len(values) > 1:
                shown = ", ".join(f"{v:g}" for v in values[:8]) + (", ..." if len(values) > 8 else "")
                notes.append(f"{name}: {role} holds {len(values)} label values ({shown}), evaluated as one "
                             "foreground; pass labels to measure each")
    distance_unit, volume_unit = _units(gt_image, gt.ndim)
    metrics = class_metrics(pred, gt, classes, spacing, nsd_tolerance)
    label_names = gt_image.metadata.get("label_names") or {}
    case = CaseResult(name, pred_path, gt_path, spacing, distance_unit, volume_unit, gt.size, metrics, label_names)
    return case, notes


def evaluate(pred: Path | str, gt: Path | str, labels=None, nsd_tolerance: float = 1.0, *,
             progress: ProgressCallback | None = None, cancel: CancelCheck | None = None) -> Evaluation:
    """Measure every prediction against its GT case (files or folders, 2-D or 3-D).

    ``labels``: None (any non-zero voxel is foreground), "all", label values, or name -> value.
    ``nsd_tolerance`` is in the images' units (mm, or pixels without spacing). Cases that cannot
    be read or whose grid differs from the GT land in ``Evaluation.failed`` with the reason.
    """
    if not (nsd_tolerance >= 0 and math.isfinite(nsd_tolerance)):
        raise MedsegError(f"the NSD tolerance must be a finite number >= 0, got {nsd_tolerance}")
    classes = parse_classes(labels)
    pairs, missing, unmatched = match_cases(pred, gt)
    result = Evaluation(Path(pred), Path(gt), {} if classes == "all" else dict(classes), nsd_tolerance,
                        missing=missing, unmatched=unmatched)
    steps = Progress(len(pairs), "Evaluating", progress, cancel)
    for name, pred_path, gt_path in pairs:
        try:
            case, notes = evaluate_case(name, pred_path, gt_path, classes, nsd_tolerance, result.warnings)
        except Cancelled:
            raise
        except MedsegError as exc:
            result.failed[name] = str(exc)
        else:
            result.cases.append(case)
            result.notes.extend(notes)
        steps.step(message=name)
    if classes == "all":
        _fill_absent_classes(result)
    _apply_label_names(result)
    return result


def _fill_absent_classes(result: Evaluation) -> None:
    """With labels="all", give each case the both-empty values for labels found only elsewhere."""
    labels = sorted({int(n) for case in result.cases for n in case.metrics})
    result.classes = {str(v): v for v in labels}
    for case in result.cases:
        case.metrics = {n: case.metrics.get(n) or empty_metrics(case.n_voxels) for n in result.classes}


def _apply_label_names(result: Evaluation) -> None:
    """Rename classes known only by value after the GT's label names, where these are unambiguous."""
    names: dict[int, str] = {}
    for case in result.cases:
        for value, name in case.label_names.items():
            names.setdefault(int(value), name)
    taken = set(result.classes)
    renamed = {}
    for key, label in result.classes.items():
        name = names.get(label) if label is not None and key == str(label) else None
        if name and name not in taken and list(names.values()).count(name) == 1:
            renamed[key] = name
            taken.add(name)
    if renamed:
        result.classes = {renamed.get(k, k): v for k, v in result.classes.items()}
        for case in result.cases:
            case.metrics = {renamed.get(k, k): v for k, v in case.metrics.items()}
