"""Metrics against an independent scipy implementation, MONAI's public functions and real brain masks."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_medseg.evaluation.metrics import binary_metrics, class_metrics, summarize


def reference_metrics(pred, gt, spacing, tolerance):
    """Own implementation: surfaces by erosion, distances by scipy's Euclidean distance transform."""
    cross = ndimage.generate_binary_structure(pred.ndim, 1)
    surface_pred = pred & ~ndimage.binary_erosion(pred, cross, border_value=0)
    surface_gt = gt & ~ndimage.binary_erosion(gt, cross, border_value=0)
    pred_to_gt = ndimage.distance_transform_edt(~surface_gt, sampling=spacing)[surface_pred]
    gt_to_pred = ndimage.distance_transform_edt(~surface_pred, sampling=spacing)[surface_gt]
    pooled = np.concatenate([pred_to_gt, gt_to_pred])
    tp, fp, fn = (pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()
    return {
        "dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
        "hd95": max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95)),
        "assd": pooled.mean(), "nsd": (pooled <= tolerance).mean(),
        "sensitivity": tp / (tp + fn), "specificity": (~pred & ~gt).sum() / (~gt).sum(),
        "pred_volume": pred.sum() * np.prod(spacing), "gt_volume": gt.sum() * np.prod(spacing),
    }


def assert_metrics_equal(found, expected):
    for name, value in expected.items():
        assert found[name] == pytest.approx(value, rel=1e-5, abs=1e-5), name


def random_blobs(shape, seed, threshold=0.55, sigma=3.0):
    noise = np.random.default_rng(seed).normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, sigma)
    return smooth > np.quantile(smooth, threshold)


@pytest.mark.parametrize("shape,spacing", [
    ((40, 48, 36), (2.5, 0.7, 0.9)), ((90, 70), (0.4, 1.3)), ((30, 30, 30), (1, 1, 1))])
def test_matches_independent_distance_transform(shape, spacing):
    pred, gt = random_blobs(shape, 1), random_blobs(shape, 2, threshold=0.6)
    assert_metrics_equal(binary_metrics(pred, gt, spacing, 1.5), reference_metrics(pred, gt, spacing, 1.5))


def test_one_voxel_masks_and_touching_the_border():
    gt = np.zeros((9, 11, 13), bool)
    pred = np.zeros_like(gt)
    gt[0, 0, 0] = True  # in a corner of the image
    pred[4, 5, 6] = True
    spacing = (3.0, 1.0, 0.5)
    found = binary_metrics(pred, gt, spacing, 1.0)
    distance = math.dist((0, 0, 0), (12.0, 5.0, 3.0))
    assert found["hd95"] == pytest.approx(distance) and found["assd"] == pytest.approx(distance)
    assert found["dice"] == 0 and found["nsd"] == 0
    same = binary_metrics(gt, gt, spacing, 0.0)
    assert (same["dice"], same["hd95"], same["assd"], same["nsd"]) == (1.0, 0.0, 0.0, 1.0)
    assert same["gt_volume"] == same["pred_volume"] == pytest.approx(1.5)
    assert_metrics_equal(binary_metrics(pred, gt, spacing, 13.0), reference_metrics(pred, gt, spacing, 13.0))


def test_empty_conventions():
    gt = np.zeros((8, 8), bool)
    gt[2:5, 2:6] = True
    empty = np.zeros_like(gt)
    both = binary_metrics(empty, empty, (1, 1), 1.0)
    for name in ("dice", "iou", "hd95", "assd", "nsd", "sensitivity"):
        assert math.isnan(both[name]), name
    assert both["specificity"] == 1.0 and both["gt_volume"] == 0
    missed = binary_metrics(empty, gt, (1, 1), 1.0)
    assert (missed["dice"], missed["iou"], missed["nsd"], missed["sensitivity"]) == (0, 0, 0, 0)
    assert missed["hd95"] == missed["assd"] == math.inf
    spurious = binary_metrics(gt, empty, (1, 1), 1.0)
    assert spurious["dice"] == 0 and spurious["hd95"] == math.inf and math.isnan(spurious["sensitivity"])
    full = binary_metrics(np.ones_like(gt), np.ones_like(gt), (1, 1), 1.0)
    assert math.isnan(full["specificity"]) and full["dice"] == 1


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI 1.6 warns about its own internal call
def test_equal_to_monai_functions_including_empty_classes():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    shape, spacing, tolerance = (24, 30, 28), (2.0, 0.8, 1.1), 1.2
    gt = np.zeros(shape, np.uint8)
    gt[random_blobs(shape, 3)] = 1
    gt[random_blobs(shape, 4, threshold=0.9)] = 2
    gt[3, 4, 5] = 4  # one voxel, missed by the prediction
    pred = np.zeros_like(gt)
    pred[random_blobs(shape, 5)] = 1
    pred[random_blobs(shape, 6, threshold=0.88)] = 2
    pred[random_blobs(shape, 7, threshold=0.97)] = 3  # absent from the GT; label 5 is absent from both
    found = class_metrics(pred, gt, {str(v): v for v in range(1, 6)}, spacing, tolerance)
    def onehot(labels):
        return torch.from_numpy(np.stack([labels == v for v in range(6)])[None].astype(np.float32))

    with pytest.warns(UserWarning):  # MONAI warns about the empty masks
        hd95 = compute_hausdorff_distance(onehot(pred), onehot(gt), percentile=95, spacing=spacing)[0]
        assd = compute_average_surface_distance(onehot(pred), onehot(gt), symmetric=True, spacing=spacing)[0]
        nsd = compute_surface_dice(onehot(pred), onehot(gt), [tolerance] * 5, spacing=spacing)[0]
    for index, label in enumerate(range(1, 6)):
        for name, expected in (("hd95", hd95), ("assd", assd), ("nsd", nsd)):
            value, want = found[str(label)][name], float(expected[index])
            if name == "hd95" and label in (3, 4):
                # one mask empty: MONAI's percentile of infinite distances comes out NaN; we keep inf
                assert math.isnan(want) and value == math.inf
                continue
            assert (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want, rel=1e-5), (label, name)
    assert found["3"]["assd"] == found["4"]["assd"] == math.inf and math.isnan(found["5"]["dice"])


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    gt = np.zeros((60, 60), bool)
    gt[10:50, 10:50] = True
    pred = gt.copy()
    pred[0:3, 56:60] = True  # a small far-away false positive: only pred -> GT distances see it
    pred_surface = pred & ~ndimage.binary_erosion(pred, border_value=0)
    gt_surface = gt & ~ndimage.binary_erosion(gt, border_value=0)
    pred_to_gt = ndimage.distance_transform_edt(~gt_surface)[pred_surface]
    gt_to_pred = ndimage.distance_transform_edt(~pred_surface)[gt_surface]
    directed = max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95))
    pooled = np.percentile(np.concatenate([pred_to_gt, gt_to_pred]), 95)
    assert directed > pooled + 1
    assert binary_metrics(pred, gt, (1, 1), 1.0)["hd95"] == pytest.approx(directed)


def test_label_values_binary_foreground_and_crop_match_full_image():
    gt = np.zeros((50, 60), np.uint8)
    gt[5:20, 5:25] = 255  # 0/255 mask
    pred = np.zeros((50, 60), np.uint8)
    pred[7:22, 6:24] = 1  # 0/1 mask
    found = class_metrics(pred, gt, {"foreground": None}, (0.5, 0.5), 1.0)["foreground"]
    assert_metrics_equal(found, reference_metrics(pred > 0, gt > 0, (0.5, 0.5), 1.0))
    as_float = class_metrics(pred.astype(np.float32), (gt > 0).astype(np.int16), {"1": 1}, (0.5, 0.5), 1.0)["1"]
    assert_metrics_equal(as_float, reference_metrics(pred > 0, gt > 0, (0.5, 0.5), 1.0))


def mni_masks(step=2):
    """Real masks: the MNI152 grey- and white-matter probability maps shipped with nilearn, thresholded."""
    nib = pytest.importorskip("nibabel")
    nilearn = pytest.importorskip("nilearn")
    data = Path(nilearn.__file__).parent / "datasets" / "data"
    wm = np.asarray(nib.load(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj)[::step, ::step, ::step]
    gm = np.asarray(nib.load(data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").dataobj)[::step, ::step, ::step]
    scale = float(max(wm.max(), gm.max()))
    return wm / scale, gm / scale


def test_real_brain_masks_anisotropic():
    wm, gm = mni_masks()
    spacing = (2.0, 2.0, 3.0)  # pretend anisotropic voxels
    for prob in (wm, gm):
        gt, pred = prob > 0.5, prob > 0.3  # a lenient threshold as the "prediction"
        found = binary_metrics(pred, gt, spacing, 2.0)
        assert_metrics_equal(found, reference_metrics(pred, gt, spacing, 2.0))
        assert 0.6 < found["dice"] < 1 and found["hd95"] > 0
    labels_gt = np.where(wm > 0.5, 2, np.where(gm > 0.5, 1, 0)).astype(np.uint8)
    labels_pred = np.where(wm > 0.6, 2, np.where(gm > 0.4, 1, 0)).astype(np.uint8)
    found = class_metrics(labels_pred, labels_gt, {"gm": 1, "wm": 2}, spacing, 2.0)
    assert_metrics_equal(found["wm"], reference_metrics(labels_pred == 2, labels_gt == 2, spacing, 2.0))
    assert_metrics_equal(found["gm"], reference_metrics(labels_pred == 1, labels_gt == 1, spacing, 2.0))


def test_large_volume_takes_seconds():
    n = 192
    z, y, x = np.ogrid[:n, :n, :n]
    gt, pred = np.zeros((n, n, n), np.uint8), np.zeros((n, n, n), np.uint8)
    for label, (centre, radius) in enumerate((((96, 96, 96), 60), ((40, 40, 150), 20), ((150, 140, 50), 12)), 1):
        gt[(z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius ** 2] = label
        pred[(z - centre[0] - 2) ** 2 + (y - centre[1]) ** 2 + (x - centre[2] + 1) ** 2 < (1.05 * radius) ** 2] = label
    class_metrics(pred[:8, :8, :8], gt[:8, :8, :8], {"1": 1}, (1, 1, 1), 1.0)  # import MONAI outside the timing
    found = class_metrics(pred, gt, {"1": 1, "2": 2, "3": 3}, (1.0, 0.8, 0.8), 1.0)
    assert all(0.8 < found[k]["dice"] < 1 for k in found)


def test_summary_leaves_nan_out_and_keeps_inf():
    assert summarize([0.5, float("nan"), 0.7]) == pytest.approx({"mean": 0.6, "sd": np.std([0.5, 0.7], ddof=1),
                                                                 "median": 0.6, "n": 2})
    with_inf = summarize([1.0, 2.0, float("inf")])
    assert with_inf["mean"] == with_inf["sd"] == math.inf and with_inf["median"] == 2.0 and with_inf["n"] == 3
    single = summarize([0.9])
    assert single["mean"] == 0.9 and math.isnan(single["sd"]) and single["n"] == 1
    assert summarize([float("nan")])["n"] == 0
