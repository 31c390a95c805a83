"""A self-contained HTML report of an `Evaluation`: tables, Dice/HD95 plots and contour overlays.

Plots are drawn with matplotlib's Agg canvas (no pyplot, so no GUI backend is touched) and embedded
as base64 PNG. Overlays show the best, median and worst case by mean Dice over classes, on the
slice with the most ground truth, drawn over the image when one is given, else over the GT.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from .evaluate import Evaluation, case_name, label_array
from .metrics import METRICS

GT_COLOUR, PRED_COLOUR = "#00c853", "#ff1fd0"
TITLES = {
    "dice": "Dice", "iou": "IoU", "hd95": "HD95", "assd": "ASSD", "nsd": "NSD", "sensitivity": "Sensitivity",
    "specificity": "Specificity", "pred_volume": "Volume pred", "gt_volume": "Volume GT",
}
CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2330;
       margin: 0 auto; padding: 24px 32px; max-width: 1400px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #dde2ea;
     padding-bottom: 4px; }
.meta { color: #5b6474; margin: 0 0 4px; } .meta code { background: #f2f4f8; padding: 1px 4px; border-radius: 3px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 6px 0; font-size: 13px; }
th, td { padding: 4px 7px; border-bottom: 1px solid #e6e9ef; text-align: right; }
td { white-space: nowrap; }
th { background: #f4f6fa; font-weight: 600; position: sticky; top: 0; vertical-align: bottom; }
td.name, th.name { text-align: left; } tr:hover td { background: #f7f9fc; }
td small { display: block; color: #6b7385; font-size: 11px; }
.warn { background: #fff6e0; border: 1px solid #f0d48a; border-radius: 6px; padding: 8px 14px; margin: 12px 0; }
.warn li { margin: 2px 0; }
.figure { max-width: 100%; }
.overlays { display: flex; flex-wrap: wrap; gap: 18px; }
.overlays figure { margin: 0; } .overlays figcaption { color: #3b4352; font-size: 13px; max-width: 360px; }
.legend span { display: inline-block; width: 22px; height: 3px; vertical-align: middle; margin: 0 4px 0 12px; }
.defs li { margin: 3px 0; } .scroll { max-height: 720px; overflow: auto; border: 1px solid #e6e9ef; }
.wide { overflow-x: auto; }
"""


def write_report(evaluation: Evaluation, path: Path | str, images: Path | str | None = None) -> Path:
    """Render the report to ``path`` (HTML); ``images`` is an image file or folder for the overlays."""
    path = Path(path)
    atomic_write_text(path, render_report(evaluation, images))
    return path


def render_report(evaluation: Evaluation, images: Path | str | None = None) -> str:
    unit = evaluation.distance_unit
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Segmentation evaluation</title><style>", CSS, "</style></head><body>",
        "<h1>Segmentation evaluation</h1>",
        f"<p class='meta'>Prediction <code>{_esc(evaluation.pred)}</code> vs ground truth "
        f"<code>{_esc(evaluation.gt)}</code></p>",
        f"<p class='meta'>{len(evaluation.cases)} case(s) evaluated · classes: "
        f"{_esc(', '.join(_class_label(n, v) for n, v in evaluation.classes.items()))} · NSD tolerance "
        f"{evaluation.nsd_tolerance:g} {unit} · distances in {unit}, volumes in {evaluation.volume_unit} · "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}</p>",
        _problems(evaluation),
    ]
    if evaluation.cases:
        parts += [
            "<h2>Summary per class</h2><p class='meta'>mean ± SD; below: median · number of cases with a "
            "defined value (both-empty cases are left out, infinite distances are kept)</p>",
            "<div class='wide'>", _summary_table(evaluation), "</div>",
            "<h2>Distributions</h2>", _distribution_plots(evaluation),
            "<h2>Best, median and worst case</h2>", _overlays(evaluation, images),
            "<h2>Per case</h2><div class='scroll'>", _case_table(evaluation), "</div>",
        ]
    parts += [_definitions(evaluation), "</body></html>"]
    return "\n".join(parts)


def _esc(value) -> str:
    return html.escape(str(value))


def _class_label(name: str, label: int | None) -> str:
    if label is None:
        return f"{name} (any non-zero voxel)"
    return name if name == str(label) else f"{name} ({label})"


def _format(metric: str, value: float, like: float | None = None) -> str:
    """A table cell; ``like`` is the mean an SD is shown with, so both get the same decimals."""
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞"
    if metric in ("pred_volume", "gt_volume"):
        large = max(abs(value), abs(like) if like is not None and math.isfinite(like) else 0) >= 100
        return f"{value:,.0f}" if large or value.is_integer() else f"{value:.2f}"
    return f"{value:.2f}" if metric in ("hd95", "assd") else f"{value:.3f}"


def _headers(evaluation: Evaluation) -> list[str]:
    unit = evaluation.distance_unit
    named = {"hd95": f"HD95 ({unit})", "assd": f"ASSD ({unit})",
             "nsd": f"NSD@{evaluation.nsd_tolerance:g}{unit}",
             "pred_volume": f"Vol. pred ({evaluation.volume_unit})",
             "gt_volume": f"Vol. GT ({evaluation.volume_unit})"}
    return [named.get(m, TITLES[m]) for m in METRICS]


def _problems(evaluation: Evaluation) -> str:
    items = [f"Missing prediction for ground-truth case <b>{_esc(n)}</b>" for n in evaluation.missing]
    items += [f"<b>{_esc(n)}</b> could not be evaluated: {_esc(why)}" for n, why in evaluation.failed.items()]
    if evaluation.unmatched:
        items.append(f"{len(evaluation.unmatched)} prediction(s) without ground truth were ignored: "
                     f"{_esc(', '.join(evaluation.unmatched))}")
    items += [_esc(note) for note in evaluation.notes]
    if not items:
        return ""
    return "<div class='warn'><b>Attention</b><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>"


def _summary_table(evaluation: Evaluation) -> str:
    head = "<tr><th class='name'>Class</th>" + "".join(f"<th>{_esc(h)}</th>" for h in _headers(evaluation)) + "</tr>"
    rows = []
    for name, stats in evaluation.summary().items():
        cells = []
        for metric in METRICS:
            s = stats[metric]
            spread = f" ± {_format(metric, s['sd'], like=s['mean'])}" if s["n"] > 1 else ""
            cells.append(f"<td>{_format(metric, s['mean'])}{spread}"
                         f"<small>{_format(metric, s['median'])} · n={s['n']}</small></td>")
        label = _esc(_class_label(name, evaluation.classes[name]))
        rows.append(f"<tr><td class='name'>{label}</td>{''.join(cells)}</tr>")
    return f"<table class='summary'>{head}{''.join(rows)}</table>"


def _score_style(value: float) -> str:
    """A pale red-to-green background for overlap scores."""
    if not math.isfinite(value):
        return ""
    hue = 120 * min(max(value, 0.0), 1.0)
    return f" style='background:hsl({hue:.0f},70%,88%)'"


def _case_table(evaluation: Evaluation) -> str:
    head = ("<tr><th class='name'>Case</th><th class='name'>Class</th>"
            + "".join(f"<th>{_esc(h)}</th>" for h in _headers(evaluation)) + "</tr>")
    rows = []
    for case in evaluation.cases:
        for name, values in case.metrics.items():
            cells = "".join(
                f"<td{_score_style(values[m]) if m in ('dice', 'nsd') else ''}>{_format(m, values[m])}</td>"
                for m in METRICS
            )
            rows.append(f"<tr><td class='name'>{_esc(case.name)}</td><td class='name'>{_esc(name)}</td>{cells}</tr>")
    return f"<table class='cases'>{head}{''.join(rows)}</table>"


def _png(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _distribution_plots(evaluation: Evaluation) -> str:
    from matplotlib.figure import Figure

    names = list(evaluation.classes)
    if len(names) <= 6:  # side by side
        figure = Figure(figsize=(12.0, 4.2), layout="constrained")
        axes = figure.subplots(1, 2)
    else:
        figure = Figure(figsize=(min(18.0, max(9.0, 1.6 + 0.45 * len(names))), 8.0), layout="constrained")
        axes = figure.subplots(2, 1)
    rng = np.random.default_rng(0)
    for ax, metric, ylabel in ((axes[0], "dice", "Dice"), (axes[1], "hd95", f"HD95 ({evaluation.distance_unit})")):
        data = [np.asarray(evaluation.values(n, metric), float) for n in names]
        _violin_box(ax, data, rng)
        ax.set_ylabel(ylabel)
        ticks = [f"{name}\n{int(np.isinf(v).sum())}×∞" if np.isinf(v).any() else name
                 for name, v in zip(names, data)]
        ax.set_xticks(range(1, len(names) + 1), ticks, rotation=45 if len(names) > 8 else 0,
                      ha="right" if len(names) > 8 else "center")
        ax.grid(axis="y", color="#e3e6ec", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylim(-0.02, 1.05)
    axes[1].set_ylim(bottom=0)
    axes[0].set_title("Dice per class (violin, box and cases)", loc="left", fontsize=11)
    axes[1].set_title("HD95 per class (cases with ∞, one mask empty, counted under the class)", loc="left",
                      fontsize=11)
    return f"<img class='figure' alt='Dice and HD95 distributions' src='{_png(figure)}'>"


def _violin_box(ax, data: list[np.ndarray], rng) -> None:
    for position, values in enumerate(data, start=1):
        finite = values[np.isfinite(values)]
        if np.unique(finite).size > 1:
            parts = ax.violinplot(finite, positions=[position], widths=0.8, showextrema=False)
            for body in parts["bodies"]:
                body.set(facecolor="#9db7e0", edgecolor="none", alpha=0.55)
        if finite.size:
            ax.boxplot(finite, positions=[position], widths=0.28, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": "white", "edgecolor": "#2f4b7c"},
                       medianprops={"color": "#d62728", "linewidth": 1.6},
                       whiskerprops={"color": "#2f4b7c"}, capprops={"color": "#2f4b7c"})
            ax.scatter(position + rng.uniform(-0.12, 0.12, finite.size), finite, s=9, color="#1d2330",
                       alpha=0.6, zorder=3, linewidths=0)
    ax.set_xlim(0.4, len(data) + 0.6)


def _ranked_cases(evaluation: Evaluation) -> list[tuple[str, object]]:
    """(title, case) for the best, median and worst case by mean Dice over the defined classes."""
    scored = []
    for case in evaluation.cases:
        dice = [v["dice"] for v in case.metrics.values() if not math.isnan(v["dice"])]
        if dice:
            scored.append((float(np.mean(dice)), case.name, case))
    scored.sort(key=lambda item: (item[0], item[1]))
    if not scored:
        return []
    picks = [("Best", scored[-1]), ("Median", scored[(len(scored) - 1) // 2]), ("Worst", scored[0])]
    shown, seen = [], set()
    for title, (score, name, case) in picks:
        if name not in seen:
            seen.add(name)
            shown.append((f"{title}: {name} (mean Dice {score:.3f})", case))
    return shown


def _find_image(images: Path | None, name: str, single_case: bool) -> Path | None:
    if images is None:
        return None
    if images.is_file():
        return images if single_case or case_name(images) in (name, f"{name}_0000") else None
    if images.is_dir():
        for file in sorted(images.iterdir()):
            if file.is_file() and case_name(file) in (name, f"{name}_0000"):
                return file
    return None


def _overlays(evaluation: Evaluation, images: Path | str | None) -> str:
    images = Path(images) if images is not None else None
    figures = []
    for title, case in _ranked_cases(evaluation):
        image_path = _find_image(images, case.name, len(evaluation.cases) == 1)
        src, caption = _overlay(evaluation, case, image_path)
        figures.append(f"<figure><img alt='{_esc(title)}' src='{src}'><figcaption><b>{_esc(title)}</b><br>"
                       f"{_esc(caption)}</figcaption></figure>")
    if not figures:
        return "<p class='meta'>No case has a defined Dice (all masks empty).</p>"
    legend = (f"<p class='legend'>Contours:<span style='background:{GT_COLOUR}'></span>ground truth"
              f"<span style='background:{PRED_COLOUR}'></span>prediction</p>")
    return legend + "<div class='overlays'>" + "".join(figures) + "</div>"


def _class_mask(array: np.ndarray, label: int | None) -> np.ndarray:
    return array != 0 if label is None else array == label


def _foreground(array: np.ndarray, labels: list[int | None]) -> np.ndarray:
    return array != 0 if None in labels else np.isin(array, labels)


def _overlay(evaluation: Evaluation, case, image_path: Path | None) -> tuple[str, str]:
    from matplotlib.figure import Figure

    from ..io import read_image

    gt = label_array(read_image(case.gt_path), "ground truth")
    pred = label_array(read_image(case.pred_path), "prediction")
    labels = list(evaluation.classes.values())
    gt_fg, pred_fg = _foreground(gt, labels), _foreground(pred, labels)
    caption = []
    index = None
    if gt.ndim == 3:
        per_slice = gt_fg.sum(axis=(1, 2)) if gt_fg.any() else pred_fg.sum(axis=(1, 2))
        index = int(np.argmax(per_slice)) if per_slice.any() else gt.shape[0] // 2
        gt, pred, gt_fg, pred_fg = gt[index], pred[index], gt_fg[index], pred_fg[index]
        caption.append(f"slice z={index}")
    background, cmap = _background(image_path, index, gt.shape)
    if background is None:
        background, cmap = gt_fg.astype(float) * 0.35, "gray"
        caption.append("drawn over the ground truth")
    else:
        caption.append(f"drawn over {image_path.name}")
    rows, cols = _view_window(gt_fg | pred_fg)
    spacing = case.spacing[-2:]
    shown = background[rows, cols]
    height_to_width = shown.shape[0] * spacing[0] / (shown.shape[1] * spacing[1])
    figure = Figure(figsize=(3.6, float(np.clip(3.6 * height_to_width, 1.5, 5.4))))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.imshow(shown, cmap=cmap, aspect=spacing[0] / spacing[1], interpolation="nearest",
              vmin=0 if cmap else None, vmax=1 if cmap else None)
    for label in labels:  # GT wider underneath, so that both show where they agree
        for array, colour, width in ((gt, GT_COLOUR, 2.8), (pred, PRED_COLOUR, 1.1)):
            mask = _class_mask(array, label)[rows, cols]
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=width)
    ax.set_axis_off()
    return _png(figure), ", ".join(caption)


def _view_window(foreground: np.ndarray, margin: float = 0.5) -> tuple[slice, slice]:
    """Rows and columns around the foreground, widened by ``margin`` of its size on each side."""
    hits = np.argwhere(foreground)
    if hits.size == 0:
        return slice(None), slice(None)
    window = []
    for axis, size in enumerate(foreground.shape):
        lo, hi = hits[:, axis].min(), hits[:, axis].max() + 1
        pad = max(10, int((hi - lo) * margin))
        window.append(slice(max(0, lo - pad), min(size, hi + pad)))
    return window[0], window[1]


def _background(image_path: Path | None, index: int | None, shape: tuple) -> tuple[np.ndarray | None, str | None]:
    """The image slice scaled to [0, 1] (grey) or RGB, or None when it cannot be matched to the GT."""
    if image_path is None:
        return None, None
    from ..errors import MedsegError
    from ..io import read_image

    try:
        image = read_image(image_path)
    except MedsegError:
        return None, None
    array = np.asarray(image.array, dtype=np.float64)
    if image.channel_axis is not None:
        array = np.moveaxis(array, image.channel_axis, -1)
    if index is not None:
        array = array[index]
    if array.shape[:2] != shape:
        return None, None
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        return rgb / (255.0 if rgb.max() > 1 else 1.0), None
    if array.ndim == 3:
        array = array[..., 0]
    low, high = np.percentile(array, [1, 99])
    return np.clip((array - low) / (high - low or 1.0), 0, 1), "gray"


def _definitions(evaluation: Evaluation) -> str:
    tol, unit = evaluation.nsd_tolerance, evaluation.distance_unit
    items = [
        "Dice = 2TP / (2TP + FP + FN); IoU = TP / (TP + FP + FN); sensitivity = TP / (TP + FN); "
        "specificity = TN / (TN + FP), counted in voxels.",
        "Surfaces: mask voxels with a face-neighbour outside the mask (MONAI's edges). Distances: exact "
        "Euclidean distances between surface voxel centres, scaled by the voxel spacing "
        f"({unit}).",
        "HD95 = the larger of the two directed 95th percentiles (prediction → GT and GT → prediction, "
        "linear interpolation), as MONAI's compute_hausdorff_distance(percentile=95); not the 95th "
        "percentile of the pooled distances.",
        "ASSD = mean of the pooled surface distances of both directions (MONAI "
        "compute_average_surface_distance, symmetric).",
        f"NSD = share of the surface voxels of both masks that lie within {tol:g} {unit} of the other "
        "surface (MONAI compute_surface_dice, voxel-counted).",
        "Empty masks: when prediction and GT are both empty, Dice, IoU, HD95, ASSD, NSD and sensitivity are "
        "undefined (–) and left out of the summary, as nnU-Net does. When only one is empty, Dice = IoU = "
        "NSD = 0 and HD95 = ASSD = ∞ (MONAI's distance to an empty surface); ∞ is kept, never capped, so "
        "the mean and SD of such a class are ∞ while the median stays finite if fewer than half the cases are ∞.",
        "SD is the sample standard deviation (n − 1).",
    ]
    return "<h2>Definitions</h2><ul class='defs'>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>"
