"""Case matching, reading, geometry checks, classes, exports and the `medseg evaluate` command."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_medseg.cli import main
from napari_medseg.errors import ImageReadError, MedsegError
from napari_medseg.evaluation import binary_metrics, evaluate, match_cases
from napari_medseg.evaluation.cli import parse_labels


def test_matching_by_name_with_double_extensions(tmp_path, write_volume):
    mask = np.zeros((4, 5, 6), np.uint8)
    for name in ("a.nii.gz", "b.nii.gz", "c.nrrd", "v1.2.nii"):
        write_volume(tmp_path / "gt" / name, mask)
    for name in ("a.nii.gz", "c.nii.gz", "d.mha", "v1.2.nii.gz"):
        write_volume(tmp_path / "pred" / name, mask)
    (tmp_path / "pred" / "a.json").write_text("{}")  # sidecars and notes are not cases
    (tmp_path / "pred" / "notes.txt").write_text("")
    pairs, missing, unmatched = match_cases(tmp_path / "pred", tmp_path / "gt")
    assert [(n, p.name, g.name) for n, p, g in pairs] == [
        ("a", "a.nii.gz", "a.nii.gz"), ("c", "c.nii.gz", "c.nrrd"), ("v1.2", "v1.2.nii.gz", "v1.2.nii")]
    assert missing == ["b"] and unmatched == ["d"]
    # two single files are one case, whatever their names
    assert match_cases(tmp_path / "pred" / "d.mha", tmp_path / "gt" / "a.nii.gz")[0][0][0] == "a"


def test_matching_errors(tmp_path, write_volume):
    mask = np.zeros((3, 3, 3), np.uint8)
    write_volume(tmp_path / "gt" / "a.nii.gz", mask)
    write_volume(tmp_path / "gt" / "a.nrrd", mask)
    write_volume(tmp_path / "pred" / "x.nii.gz", mask)
    with pytest.raises(ImageReadError, match="two files for case 'a'"):
        match_cases(tmp_path / "pred", tmp_path / "gt")
    (tmp_path / "gt" / "a.nrrd").unlink()
    with pytest.raises(MedsegError, match="no prediction .* matches"):
        match_cases(tmp_path / "pred", tmp_path / "gt")
    with pytest.raises(ImageReadError, match="does not exist"):
        match_cases(tmp_path / "nowhere", tmp_path / "gt")


def test_3d_values_in_millimetres(tmp_path, write_volume, ball):
    shape, spacing_xyz = (12, 30, 34), (0.6, 0.8, 2.5)
    gt, pred = ball(shape, (6, 15, 17), 6) * 1, ball(shape, (6, 16, 15), 6) * 1
    write_volume(tmp_path / "gt" / "case.nii.gz", gt.astype(np.uint8), spacing_xyz)
    write_volume(tmp_path / "pred" / "case.nii.gz", pred.astype(np.uint8), spacing_xyz)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", nsd_tolerance=2.0)
    (case,) = result.cases
    expected = binary_metrics(pred > 0, gt > 0, spacing_xyz[::-1], 2.0)
    assert case.metrics["foreground"] == pytest.approx(expected)
    assert case.spacing == pytest.approx((2.5, 0.8, 0.6))
    assert (case.distance_unit, case.volume_unit) == ("mm", "mm^3")
    assert case.metrics["foreground"]["gt_volume"] == pytest.approx(gt.sum() * 0.6 * 0.8 * 2.5, rel=1e-5)
    assert 0 < case.metrics["foreground"]["hd95"] < 10 and result.complete


def test_binary_masks_0_255_and_0_1_in_pixels(tmp_path, write_png, ball):
    gt = ball((40, 50), (20, 22), 12).astype(np.uint8) * 255
    pred = ball((40, 50), (21, 25), 11).astype(np.uint8)
    write_png(tmp_path / "gt" / "img1.png", gt)
    write_png(tmp_path / "pred" / "img1.png", pred)
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    (case,) = result.cases
    assert case.metrics["foreground"] == pytest.approx(binary_metrics(pred > 0, gt > 0, (1, 1), 1.0))
    assert (case.distance_unit, case.volume_unit, result.distance_unit) == ("px", "px", "px")
    assert case.metrics["foreground"]["gt_volume"] == (gt > 0).sum()
    assert not result.notes


def test_colour_masks(tmp_path, write_png, ball):
    gt = ball((20, 20), (10, 10), 5).astype(np.uint8) * 255
    write_png(tmp_path / "gt" / "a.png", gt)
    write_png(tmp_path / "pred" / "a.png", np.stack([gt] * 3, axis=-1))  # grey saved as RGB: fine
    write_png(tmp_path / "gt" / "b.png", gt)
    write_png(tmp_path / "pred" / "b.png", np.stack([gt, 0 * gt, gt], axis=-1))  # a real colour image
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert result.cases[0].metrics["foreground"]["dice"] == 1.0
    assert "colour image" in result.failed["b"] and not result.complete


def test_grid_mismatches_fail_only_their_case(tmp_path, write_volume):
    mask = np.zeros((6, 7, 8), np.uint8)
    mask[2:4, 2:5, 3:6] = 1
    for name in ("ok", "shape", "spacing", "origin"):
        write_volume(tmp_path / "gt" / f"{name}.nii.gz", mask, (1.0, 1.0, 3.0), (10.0, 0.0, 0.0))
    write_volume(tmp_path / "pred" / "ok.nii.gz", mask, (1.0, 1.0, 3.0), (10.0, 0.0, 0.0))
    write_volume(tmp_path / "pred" / "shape.nii.gz", mask[:, :, :7], (1.0, 1.0, 3.0), (10.0, 0.0, 0.0))
    write_volume(tmp_path / "pred" / "spacing.nii.gz", mask, (1.0, 1.0, 2.0), (10.0, 0.0, 0.0))
    write_volume(tmp_path / "pred" / "origin.nii.gz", mask, (1.0, 1.0, 3.0), (12.0, 0.0, 0.0))
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert [c.name for c in result.cases] == ["ok"]
    assert "shape (6, 7, 7) differs from ground truth shape (6, 7, 8)" in result.failed["shape"]
    assert "spacing" in result.failed["spacing"] and "origin" in result.failed["origin"]


def test_labels_all_and_named(tmp_path, write_volume):
    first = np.zeros((5, 10, 10), np.uint8)
    first[1:4, 1:5, 1:5], first[1:4, 6:9, 6:9] = 1, 2
    second = np.zeros_like(first)
    second[1:4, 2:6, 2:6], second[2, 7, 7] = 1, 3
    for name, gt in (("one", first), ("two", second)):
        write_volume(tmp_path / "gt" / f"{name}.nii.gz", gt)
        write_volume(tmp_path / "pred" / f"{name}.nii.gz", gt)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", labels="all")
    assert result.classes == {"1": 1, "2": 2, "3": 3}
    one = {c.name: c for c in result.cases}["one"]
    assert math.isnan(one.metrics["3"]["dice"]) and one.metrics["3"]["specificity"] == 1.0
    summary = result.summary()
    assert summary["1"]["dice"]["n"] == 2 and summary["3"]["dice"]["n"] == 1  # both-empty case one left out
    assert summary["3"]["dice"]["mean"] == 1.0 and math.isnan(summary["3"]["dice"]["sd"])
    named = evaluate(tmp_path / "pred", tmp_path / "gt", labels={"tumour": 3})
    assert list(named.classes) == ["tumour"] and named.summary()["tumour"]["dice"]["n"] == 1
    binary = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert binary.classes == {"foreground": None} and len(binary.notes) == 4  # GT and prediction of both cases
    with pytest.raises(MedsegError, match="positive integers"):
        evaluate(tmp_path / "pred", tmp_path / "gt", labels=[0])


def test_class_names_from_the_gt_sidecar(tmp_path):
    from napari_medseg.io import Image, write_labels

    labels = np.zeros((4, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3], labels[1:3, 4:6, 4:6] = 1, 2
    like = Image(np.zeros_like(labels), (1, 1, 1), (0, 0, 0), np.eye(3))
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    write_labels(labels, like, tmp_path / "gt" / "c.nii.gz", label_names={1: "liver", 2: "spleen"})
    write_labels(labels, like, tmp_path / "pred" / "c.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "gt", labels=[1, 2])
    assert result.classes == {"liver": 1, "spleen": 2} and set(result.cases[0].metrics) == {"liver", "spleen"}


def test_csv_and_strict_json(tmp_path, write_volume):
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[1:3, 2:6, 2:6] = 1
    gt[2, 1, 1] = 2  # missed by the prediction: inf distances
    write_volume(tmp_path / "gt" / "a.nii.gz", gt)
    write_volume(tmp_path / "pred" / "a.nii.gz", (gt == 1).astype(np.uint8))
    write_volume(tmp_path / "gt" / "b.nii.gz", gt)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", labels=[1, 2, 3])
    data = json.loads(result.write_json(tmp_path / "m.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert data["cases"]["a"]["metrics"]["1"]["dice"] == 1.0
    assert data["cases"]["a"]["metrics"]["2"]["hd95"] == "inf" and data["cases"]["a"]["metrics"]["3"]["dice"] is None
    assert data["summary"]["2"]["hd95"]["mean"] == "inf" and data["summary"]["3"]["dice"]["n"] == 0
    assert data["missing_predictions"] == ["b"] and "max of the two directed 95th" in data["conventions"]
    with open(result.write_csv(tmp_path / "m.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["class"]) for r in rows] == [("a", "1"), ("a", "2"), ("a", "3")]
    assert rows[1]["hd95"] == "inf" and rows[2]["dice"] == "nan" and float(rows[0]["gt_volume"]) == 32.0


def test_parse_labels():
    assert parse_labels("1,2") == {"1": 1, "2": 2}
    assert parse_labels("1=liver, 2=spleen") == {"liver": 1, "spleen": 2}
    assert parse_labels("ALL") == "all"
    with pytest.raises(MedsegError, match="--labels"):
        parse_labels("liver")


def test_command_line(tmp_path, write_volume, capsys):
    gt = np.zeros((5, 9, 9), np.uint8)
    gt[1:4, 2:7, 2:7] = 1
    pred = np.roll(gt, 1, axis=2)
    for name in ("p1", "p2"):
        write_volume(tmp_path / "gt" / f"{name}.nii.gz", gt)
    write_volume(tmp_path / "pred" / "p1.nii.gz", pred)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--nsd-tolerance", "0.5",
                 "--csv", str(out / "t.csv"), "--json", str(out / "t.json"), "--report", str(out / "r.html")])
    captured = capsys.readouterr()
    assert code == 1  # p2 has no prediction
    assert "missing prediction: p2" in captured.err and "NSD@0.5mm" in captured.out
    expected = binary_metrics(pred > 0, gt > 0, (1, 1, 1), 0.5)["dice"]
    assert f"{expected:.3f}" in captured.out.splitlines()[1]
    assert all((out / n).stat().st_size > 0 for n in ("t.csv", "t.json", "r.html"))
    assert main(["evaluate", str(tmp_path / "pred" / "p1.nii.gz"), str(tmp_path / "gt" / "p1.nii.gz")]) == 0
    assert main(["evaluate", str(tmp_path / "nothing"), str(tmp_path / "gt")]) == 2
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--nsd-tolerance", "-1"]) == 2


def test_lossy_jpeg_masks_are_thresholded(tmp_path, write_png, ball):
    from PIL import Image

    mask = ball((60, 80), (30, 40), 18).astype(np.uint8) * 255
    write_png(tmp_path / "gt" / "k1.png", mask)
    (tmp_path / "pred").mkdir()
    Image.fromarray(mask).save(tmp_path / "pred" / "k1.jpg", quality=70)
    assert (np.asarray(Image.open(tmp_path / "pred" / "k1.jpg")) != 0).sum() > (mask != 0).sum()  # ringing
    (case,) = evaluate(tmp_path / "pred", tmp_path / "gt").cases
    assert case.metrics["foreground"]["dice"] > 0.99


def test_progress_and_cancel(tmp_path, write_volume):
    from napari_medseg.errors import Cancelled

    for name in ("a", "b"):
        write_volume(tmp_path / "gt" / f"{name}.nii.gz", np.ones((2, 3, 3), np.uint8))
        write_volume(tmp_path / "pred" / f"{name}.nii.gz", np.ones((2, 3, 3), np.uint8))
    seen = []
    evaluate(tmp_path / "pred", tmp_path / "gt", progress=lambda done, total, message: seen.append((done, total)))
    assert seen == [(0, 2), (1, 2), (2, 2)]
    with pytest.raises(Cancelled):
        evaluate(tmp_path / "pred", tmp_path / "gt", cancel=lambda: True)
