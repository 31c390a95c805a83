"""Per-class segmentation metrics: overlap, volumes and surface distances in physical units.

Definitions (the HTML report repeats them):

- Overlap from the confusion counts TP, FP, FN, TN, as nnU-Net computes them:
  Dice = 2TP / (2TP + FP + FN), IoU (Jaccard) = TP / (TP + FP + FN), sensitivity = TP / (TP + FN),
  specificity = TN / (TN + FP). Volumes are voxel counts times the voxel size (mm^3, mm^2 for 2-D
  images, or pixels when the image has no spacing).
- Surfaces and distances are MONAI's (``monai.metrics.utils.get_edge_surface_distance``, the code
  behind ``compute_hausdorff_distance``, ``compute_average_surface_distance`` and
  ``compute_surface_dice``): the surface is the mask minus its erosion by the face-connected cross;
  distances are exact Euclidean distances between surface voxel centres, scaled by the spacing.
  They are computed once per class and reduced three ways, with results equal to MONAI's functions:
  - HD95 = max(P95(pred -> GT), P95(GT -> pred)): the larger of the two directed 95th percentiles
    (linear interpolation), i.e. ``compute_hausdorff_distance(percentile=95)``; NOT the 95th
    percentile of the pooled distances.
  - ASSD = mean of the pooled distances of both directions,
    i.e. ``compute_average_surface_distance(symmetric=True)``.
  - NSD = share of surface voxels of both masks lying within the tolerance of the other surface,
    i.e. ``compute_surface_dice(use_subvoxels=False)``.
- Empty masks: when GT and prediction are both empty, Dice, IoU, HD95, ASSD, NSD and sensitivity
  are NaN (undefined, nnU-Net's convention) and summaries leave them out. When exactly one is empty,
  Dice = IoU = NSD = 0 and HD95 = ASSD = +inf: MONAI's surface distances to an empty surface are
  inf, and its ASSD is inf; its HD95 comes out NaN there (a percentile of infinities), which we do
  not follow, so that a missed or hallucinated structure never drops out of the means. Sensitivity
  is NaN whenever the GT is empty; specificity is NaN only when the GT fills the whole image.
- Summaries leave NaN out (``n`` counts the remaining cases) and keep +inf as it is, never capped:
  one infinite value makes the mean and SD infinite, while the median stays finite as long as
  fewer than half the values are infinite. SD is the sample SD (ddof=1), NaN for a single value.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

METRICS = ("dice", "iou", "hd95", "assd", "nsd", "sensitivity", "specificity", "pred_volume", "gt_volume")
DISTANCE_METRICS = ("hd95", "assd")
VOLUME_METRICS = ("pred_volume", "gt_volume")

Box = tuple[slice, ...]


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of ``pred`` to the surface of ``gt``, and back (MONAI)."""
    import warnings

    import torch
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():  # MONAI 1.5-1.6 warns about its own internal call
        warnings.simplefilter("ignore", FutureWarning)
        _, (pred_to_gt, gt_to_pred), _ = get_edge_surface_distance(
            torch.from_numpy(np.ascontiguousarray(pred, dtype=bool)),
            torch.from_numpy(np.ascontiguousarray(gt, dtype=bool)),
            spacing=[float(s) for s in spacing], symmetric=True, warn_empty=False,
        )
    return pred_to_gt.numpy().astype(np.float64), gt_to_pred.numpy().astype(np.float64)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], nsd_tolerance: float,
                   n_voxels: int | None = None) -> dict[str, float]:
    """All of `METRICS` for two boolean masks of one shape; ``spacing`` in array axis order.

    ``n_voxels`` is the size of the whole image when the masks are a crop of it (for TN).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    tp = int(np.count_nonzero(pred & gt))
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    fp, fn = n_pred - tp, n_gt - tp
    tn = (pred.size if n_voxels is None else n_voxels) - tp - fp - fn
    voxel_size = float(np.prod(spacing))
    values = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "pred_volume": n_pred * voxel_size,
        "gt_volume": n_gt * voxel_size,
    }
    if n_pred == 0 and n_gt == 0:
        values.update(hd95=float("nan"), assd=float("nan"), nsd=float("nan"))
    elif n_pred == 0 or n_gt == 0:
        values.update(hd95=float("inf"), assd=float("inf"), nsd=0.0)
    else:
        pred_to_gt, gt_to_pred = surface_distances(pred, gt, spacing)
        pooled = np.concatenate([pred_to_gt, gt_to_pred])
        values.update(
            hd95=float(max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95))),
            assd=float(pooled.mean()),
            nsd=float(np.count_nonzero(pooled <= nsd_tolerance) / pooled.size),
        )
    return {name: values[name] for name in METRICS}


def empty_metrics(n_voxels: int) -> dict[str, float]:
    """The values for a class absent from both prediction and GT of an image of ``n_voxels``."""
    nan = float("nan")
    values = dict.fromkeys(("dice", "iou", "hd95", "assd", "nsd", "sensitivity"), nan)
    values.update(specificity=1.0 if n_voxels else nan, pred_volume=0.0, gt_volume=0.0)
    return {name: values[name] for name in METRICS}


def bounding_box(mask: np.ndarray) -> Box | None:
    """The smallest box holding every True voxel, or None for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def label_boxes(array: np.ndarray, labels: Sequence[int]) -> dict[int, Box | None]:
    """Bounding box of each label value, in one pass over integer label maps."""
    from scipy import ndimage

    labels = list(labels)
    if labels and array.dtype.kind in "iu" and min(labels) > 0 and max(labels) <= 65535:
        found = ndimage.find_objects(array, max_label=max(labels))
        return {label: found[label - 1] for label in labels}
    return {label: bounding_box(array == label) for label in labels}


def _union_box(boxes: Sequence[Box | None], shape: tuple[int, ...], margin: int = 1) -> Box | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(
        slice(max(0, min(b[axis].start for b in boxes) - margin), min(size, max(b[axis].stop for b in boxes) + margin))
        for axis, size in enumerate(shape)
    )


def class_metrics(pred: np.ndarray, gt: np.ndarray, classes: Mapping[str, int | None], spacing: Sequence[float],
                  nsd_tolerance: float) -> dict[str, dict[str, float]]:
    """Metrics per class of two label maps of one shape.

    ``classes`` maps a class name to its label value, or to None for "any non-zero voxel" (binary
    masks stored as 0/1 or 0/255). Each class is measured inside the bounding box of prediction |
    GT (plus one voxel), so small structures in large volumes cost little.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"label map shapes differ: {pred.shape} vs {gt.shape}")
    labels = [v for v in classes.values() if v is not None]
    pred_boxes, gt_boxes = label_boxes(pred, labels), label_boxes(gt, labels)
    results = {}
    for name, label in classes.items():
        if label is None:
            pred_mask, gt_mask = pred != 0, gt != 0
            box = _union_box([bounding_box(pred_mask), bounding_box(gt_mask)], gt.shape)
            if box is not None:
                pred_mask, gt_mask = pred_mask[box], gt_mask[box]
        else:
            box = _union_box([pred_boxes[label], gt_boxes[label]], gt.shape)
            if box is not None:
                pred_mask, gt_mask = pred[box] == label, gt[box] == label
        results[name] = (empty_metrics(gt.size) if box is None else
                         binary_metrics(pred_mask, gt_mask, spacing, nsd_tolerance, n_voxels=gt.size))
    return results


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample SD, median and count of the defined (non-NaN) values; +inf is kept, never capped."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    nan = float("nan")
    if v.size == 0:
        return {"mean": nan, "sd": nan, "median": nan, "n": 0}
    if np.isinf(v).any():
        sd = float("inf") if v.size > 1 else nan
    else:
        sd = float(np.std(v, ddof=1)) if v.size > 1 else nan
    return {"mean": float(np.mean(v)), "sd": sd, "median": float(np.median(v)), "n": int(v.size)}
