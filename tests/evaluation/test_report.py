"""The HTML report holds the tables, the distribution plots and the best/median/worst overlays."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from napari_medseg.evaluation import evaluate, write_report

PNG = re.compile(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


def embedded_pngs(html: str) -> list:
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in PNG.findall(html)]


@pytest.fixture
def volumes(tmp_path, write_volume, ball):
    """Four 3-D cases of two classes with growing errors, their images, and one GT without prediction."""
    shape, spacing = (10, 32, 40), (0.8, 0.8, 2.0)
    for index in range(5):
        gt = np.zeros(shape, np.uint8)
        gt[ball(shape, (5, 16, 14), 7)] = 1
        gt[ball(shape, (5, 15, 30), 5)] = 2
        pred = np.zeros_like(gt)
        pred[ball(shape, (5, 16 + index, 14 + index), 7 - index)] = 1
        pred[ball(shape, (5, 15, 30 - index), 5)] = 2
        image = (np.random.default_rng(index).normal(100, 20, shape) + 300 * (gt > 0)).astype(np.int16)
        write_volume(tmp_path / "gt" / f"case{index}.nii.gz", gt, spacing)
        write_volume(tmp_path / "img" / f"case{index}_0000.nii.gz", image, spacing)
        if index < 4:
            write_volume(tmp_path / "pred" / f"case{index}.nii.gz", pred, spacing)
    return tmp_path


def test_report_tables_plots_and_overlays(volumes):
    result = evaluate(volumes / "pred", volumes / "gt", labels={"kidney": 1, "cyst": 2})
    html = write_report(result, volumes / "report.html", images=volumes / "img").read_text(encoding="utf-8")
    assert "<table class='summary'>" in html and "<table class='cases'>" in html
    assert html.count("<tr><td class='name'>case") == 8  # 4 cases x 2 classes
    assert "kidney (1)" in html and "cyst (2)" in html
    assert "Missing prediction for ground-truth case <b>case4</b>" in html
    assert "Best: case0 (mean Dice 1.000)" in html and "Worst: case3" in html
    assert "Median: case2" in html  # the lower of the two middle cases
    assert "drawn over case0_0000.nii.gz" in html
    assert "not the 95th percentile of the pooled distances" in html
    plots, *overlays = embedded_pngs(html)
    assert len(overlays) == 3 and plots.size[0] > 800 and all(o.size[0] > 200 for o in overlays)
    worst = np.asarray(overlays[-1].convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((0x00, 0xC8, 0x53), (0xFF, 0x1F, 0xD0)):  # GT and prediction contours are drawn
        assert (np.abs(worst - colour).sum(axis=1) < 40).sum() > 20


def test_report_without_images_draws_over_the_gt_and_counts_infinite_distances(volumes, write_volume):
    empty = np.zeros((10, 32, 40), np.uint8)
    write_volume(volumes / "pred" / "case4.nii.gz", empty, (0.8, 0.8, 2.0))  # everything missed: HD95 = inf
    result = evaluate(volumes / "pred", volumes / "gt")
    html = write_report(result, volumes / "r.html").read_text(encoding="utf-8")
    assert "drawn over the ground truth" in html and "∞" in html and "Worst: case4 (mean Dice 0.000)" in html
    assert len(embedded_pngs(html)) == 4


def test_report_for_2d_photos_and_empty_cases(tmp_path, write_png, ball):
    gt = ball((48, 64), (24, 30), 14).astype(np.uint8) * 255
    write_png(tmp_path / "gt" / "polyp.png", gt)
    write_png(tmp_path / "pred" / "polyp.png", ball((48, 64), (26, 33), 13).astype(np.uint8))
    photo = np.stack([np.full((48, 64), 180), gt // 2, np.full((48, 64), 40)], axis=-1).astype(np.uint8)
    write_png(tmp_path / "img" / "polyp.png", photo)
    write_png(tmp_path / "gt" / "blank.png", np.zeros((48, 64), np.uint8))
    write_png(tmp_path / "pred" / "blank.png", np.zeros((48, 64), np.uint8))
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    html = write_report(result, tmp_path / "r.html", images=tmp_path / "img").read_text(encoding="utf-8")
    assert "HD95 (px)" in html and "drawn over polyp.png" in html and "Best: polyp" in html
    assert len(embedded_pngs(html)) == 2  # plots + the only case with a defined Dice
    only_empty = evaluate(tmp_path / "pred" / "blank.png", tmp_path / "gt" / "blank.png")
    html = write_report(only_empty, tmp_path / "e.html").read_text(encoding="utf-8")
    assert "No case has a defined Dice" in html and len(embedded_pngs(html)) == 1
