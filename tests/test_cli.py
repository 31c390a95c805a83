import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_medseg.cli import main


def test_help_is_instant_and_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "napari_medseg.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo", "info", "models", "segment", "evaluate"):
        assert command in result.stdout
    probe = subprocess.run([sys.executable, "-X", "importtime", "-m", "napari_medseg.cli", "--help"],
                           capture_output=True, text=True)
    assert " torch" not in probe.stderr and " napari " not in probe.stderr, "heavy imports at startup"


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"]
    assert "cpu" in info["devices"]
    assert info["weights folder"]


def test_models_list_shows_bundled_lite_medsam(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("lite-medsam "))
    assert "bundled" in line
    assert any(l.startswith("sam-vit-b ") and "missing" in l for l in out.splitlines())


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    assert main(["segment", str(bad), "-o", str(tmp_path / "out.nii.gz"), "--box", "1,1,5,5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medseg: error:") and "\n" not in err and "Traceback" not in err


def test_missing_weights_names_the_install_command(tmp_path, capsys):
    from skimage import data
    import imageio.v3 as iio

    png = tmp_path / "cells.png"
    iio.imwrite(png, data.cell())
    assert main(["segment", str(png), "-o", str(tmp_path / "o.png"), "--model", "sam-vit-b", "--box", "1,1,50,50"]) == 2
    err = capsys.readouterr().err
    assert "medseg models install sam-vit-b" in err


@pytest.mark.parametrize("argv", [["models", "install", "no-such-model", "x.pth"], ["segment", "missing.nii.gz", "-o", "x.nii.gz"]])
def test_user_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "medseg: error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- read warnings reach the user

def _warned_inputs(folder):
    """One input per read warning: NaN voxels, a sheared sform, RGBA PNG and TIFF, two TIFF series, a split
    DICOM series; returns {case name: text its warning holds}."""
    import nibabel as nib
    import numpy as np
    import pydicom
    import tifffile
    from PIL import Image as PILImage
    from pydicom.data import get_testdata_file

    folder.mkdir()
    data = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), folder / "nan.nii.gz")
    sheared = np.eye(4)
    sheared[0, 1] = 0.4
    nii = nib.Nifti1Image(np.ones((6, 5, 4), np.int16), sheared)
    nii.set_sform(sheared, 2)
    nii.set_qform(np.eye(4), 1)
    nib.save(nii, folder / "shear.nii.gz")
    PILImage.fromarray(np.full((20, 30, 4), 128, np.uint8)).save(folder / "rgba.png")
    tifffile.imwrite(folder / "alpha.tif", np.full((20, 30, 4), 9, np.uint8), photometric="rgb",
                     extrasamples=["unassalpha"])
    tifffile.imwrite(folder / "two.tif", np.ones((20, 30), np.uint8))
    tifffile.imwrite(folder / "two.tif", np.ones((8, 9), np.uint16), append=True)
    series = folder / "ct"
    series.mkdir()
    for index, z in enumerate((0.0, 2.0, 4.0, 6.0, 20.0, 22.0)):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.InstanceNumber = index + 1
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{index}"
        ds.save_as(series / f"IM{index:04d}")
    tilted = folder / "tilt"  # a 15-degree gantry tilt: slices shifted along y as they advance in z
    tilted.mkdir()
    for index in range(4):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.ImagePositionPatient = [0.0, -index * 2.0 * np.tan(np.radians(15)), index * 2.0]
        ds.InstanceNumber, ds.SOPInstanceUID = index + 1, f"{ds.SOPInstanceUID}.9{index}"
        ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.9"
        ds.save_as(tilted / f"IM{index:04d}")
    return {"nan": "NaN/infinite voxels replaced", "shear": "sheared", "rgba": "transparency dropped",
            "alpha": "alpha channel dropped", "two": "2 image series", "ct": "read stack",
            "tilt": "gantry tilt of 15.0 degrees corrected by resampling"}


def _without_model(monkeypatch):
    """Reading and writing stay real; the model and its prediction are stand-ins (empty masks)."""
    from types import SimpleNamespace

    import numpy as np

    import napari_medseg.models.load as load
    import napari_medseg.segmentation as segmentation

    monkeypatch.setattr(load, "load_model", lambda *a, **k: SimpleNamespace(classes={0: "background", 1: "object"}))
    monkeypatch.setattr(segmentation, "segment", lambda image, model, **k: np.zeros(image.spatial_shape, np.uint8))


def test_segment_prints_every_read_warning_and_the_manifest_keeps_them(tmp_path, capsys, monkeypatch):
    _without_model(monkeypatch)
    expected = _warned_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "in"), "-o", str(out), "--box", "1,1,4,4,1"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err.splitlines()
    manifest = json.loads((out / "medseg_run.json").read_text())
    cases = {case["name"]: case for case in manifest["cases"]}
    assert set(cases) == set(expected)
    for name, text in expected.items():
        assert any(text in w for w in cases[name]["warnings"]), (name, cases[name])
        assert any(line.startswith(f"medseg: warning: {name}: ") and text in line for line in err), (name, err)

    assert main(["segment", str(tmp_path / "in" / "nan.nii.gz"), "-o", str(tmp_path / "nan_mask.nii.gz"),
                 "--box", "1,1,4,4,1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "warning" in line] == [
        "medseg: warning: nan.nii.gz: 1 NaN/infinite voxels replaced by 0"]


def test_evaluate_prints_read_warnings(tmp_path, capsys):
    _warned_inputs(tmp_path / "in")
    assert main(["evaluate", str(tmp_path / "in" / "shear.nii.gz"), str(tmp_path / "in" / "shear.nii.gz")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medseg: warning:")]
    assert len(warned) == 2 and all("sheared" in line for line in warned)
    assert "ground truth shear.nii.gz" in warned[0] and "prediction shear.nii.gz" in warned[1]


def test_train_prints_read_warnings_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import numpy as np
    from PIL import Image as PILImage

    import napari_medseg.training.pipeline as pipeline
    from napari_medseg.errors import MedsegError

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for name in ("a", "b"):
        PILImage.fromarray(np.full((20, 30, 4), 128, np.uint8)).save(tmp_path / "images" / f"{name}.png")
        PILImage.fromarray(np.eye(20, 30, dtype=np.uint8)).save(tmp_path / "labels" / f"{name}.png")

    def stop(*args, **kwargs):
        raise MedsegError("model loading reached")

    monkeypatch.setattr(pipeline, "initial_model", stop)
    assert main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--model", "lite-medsam", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("medseg: warning:")] == [
        f"medseg: warning: {name}: {name}.png: transparency dropped" for name in ("a", "b")]
    assert err[-1] == "medseg: error: model loading reached"


# --------------------------------------------------------------------------- inputs refused before the model loads

def _no_model_may_load(monkeypatch):
    import napari_medseg.models.load as load

    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model loaded"))


@pytest.fixture
def images(tmp_path):
    import nibabel as nib
    import numpy as np
    from PIL import Image as PILImage

    PILImage.fromarray(np.full((40, 50), 100, np.uint8)).save(tmp_path / "photo.png")
    nib.save(nib.Nifti1Image(np.ones((30, 20, 6), np.int16), np.eye(4)), tmp_path / "volume.nii.gz")
    return tmp_path


@pytest.mark.parametrize("image, prompt, message", [
    ("photo.png", ["--point", "nan,3"], "finite"),
    ("photo.png", ["--point", "3,inf"], "finite"),
    ("photo.png", ["--point", "60,3"], "outside the 50x40 image"),
    ("photo.png", ["--box", "1,1,20,20", "--negative-point", "5,-2"], "outside the 50x40 image"),
    ("photo.png", ["--box", "1,1,20,20,0"], "2-D image has no slices"),
    ("photo.png", ["--point", "3,3,1"], "2-D image has no slices"),
    ("volume.nii.gz", ["--box", "1,1,10,10,2.5"], "whole number"),
    ("volume.nii.gz", ["--box", "1,1,10,10,nan"], "whole number"),
    ("volume.nii.gz", ["--point", "3,3,inf"], "whole number"),
    ("volume.nii.gz", ["--box", "1,1,10,10,6"], "outside the volume (0..5)"),
    ("volume.nii.gz", ["--point", "3,3"], "slice index"),
])
def test_bad_prompts_are_one_line_before_the_model_loads(image, prompt, message, images, capsys, monkeypatch):
    _no_model_may_load(monkeypatch)
    assert main(["segment", str(images / image), "-o", str(images / "mask.nii.gz"), *prompt]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_point_validator_is_the_predictors_too():
    import numpy as np

    from napari_medseg.errors import PromptError
    from napari_medseg.inference.box2d import check_points

    np.testing.assert_array_equal(check_points([[1, 2]], (10, 10), [1]), [[1.0, 2.0]])
    for points, labels in (([[np.nan, 1]], None), ([[11, 1]], None), ([[1, 1]], [2]), ([[1, 1]], [1, 0])):
        with pytest.raises(PromptError):
            check_points(points, (10, 10), labels)


@pytest.mark.parametrize("output, message", [
    ("mask.jpg", ".jpg files cannot hold labels"),
    ("mask.jpeg", ".jpeg files cannot hold labels"),
    ("mask.bmp", ".bmp files cannot hold labels"),
])
def test_lossy_or_non_label_output_is_refused_not_made_a_folder(output, message, images, capsys, monkeypatch):
    _no_model_may_load(monkeypatch)
    assert main(["segment", str(images / "photo.png"), "-o", str(images / output), "--box", "1,1,20,20"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (images / output).exists()


def _read_only(folder, monkeypatch):
    """``folder`` as on a read-only mount (permission bits do not stop root): creating files in it fails."""
    import errno
    import os
    import tempfile

    import napari_medseg.cli as cli

    folder.mkdir(exist_ok=True)
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).absolute().is_relative_to(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cli.tempfile, "mkstemp", mkstemp)
    return folder


def test_unwritable_outputs_are_refused_before_the_model_loads(images, capsys, monkeypatch):
    _no_model_may_load(monkeypatch)
    locked = _read_only(images / "locked", monkeypatch)
    cases = [
        (["-o", str(locked / "mask.png")], "-o: cannot write in"),
        (["-o", str(images / "missing" / "mask.png")], "-o: folder"),
        (["-o", str(locked / "out")], "-o: cannot write in"),
        (["-o", str(images / "out"), "--manifest", str(locked / "run.json")], "--manifest: cannot write in"),
        (["-o", str(images / "several.nii.gz"), str(images / "volume.nii.gz")], "names one file"),
    ]
    for argv, message in cases:
        inputs = [str(images / "photo.png")] + [a for a in argv if a.endswith("volume.nii.gz")]
        argv = [a for a in argv if not a.endswith("volume.nii.gz")]
        assert main(["segment", *inputs, *argv, "--box", "1,1,20,20"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert not (images / "out").exists()


def test_evaluate_outputs_are_checked_before_the_evaluation(images, capsys, monkeypatch):
    import importlib

    evaluate = importlib.import_module("napari_medseg.evaluation.evaluate")  # the package exports evaluate()
    locked = _read_only(images / "locked", monkeypatch)
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("the evaluation ran"))
    volume = str(images / "volume.nii.gz")
    for option in ("--csv", "--json", "--report"):
        for target, message in ((images / "missing" / "out", "folder"), (locked / "out", "cannot write in"),
                                (images, "is a folder")):
            assert main(["evaluate", volume, volume, option, str(target)]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"{option}" in err and message in err, err


def test_evaluate_tables_are_replaced_atomically(images, capsys, monkeypatch):
    import napari_medseg.atomic as atomic

    volume = str(images / "volume.nii.gz")
    table = images / "metrics.json"
    table.write_text("old")

    def full_disk(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "write_fully", full_disk)
    assert main(["evaluate", volume, volume, "--json", str(table)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "No space left on device" in err[-1] and "Traceback" not in "".join(err)
    assert table.read_text() == "old" and sorted(p.name for p in images.glob("*metrics*")) == ["metrics.json"]


def test_segment_no_mirroring_is_passed_to_segment():
    import argparse

    from napari_medseg.cli_commands import segment as segment_command

    parser = argparse.ArgumentParser()
    segment_command.add_arguments(parser)
    fast = segment_command._prompt_kwargs(parser.parse_args(["scan.nii.gz", "-o", "out", "--no-mirroring"]))
    faithful = segment_command._prompt_kwargs(parser.parse_args(["scan.nii.gz", "-o", "out"]))
    assert fast["mirroring"] is False and faithful["mirroring"] is None


def test_precision_is_a_named_choice_passed_to_segment(tmp_path, monkeypatch, capsys):
    import numpy as np
    import imageio.v3 as iio

    import napari_medseg.segmentation as segmentation

    png = tmp_path / "grey.png"
    iio.imwrite(png, np.zeros((16, 16), np.uint8))
    with pytest.raises(SystemExit) as refused:  # the earlier names are not CLI choices: one usage error, exit 2
        main(["segment", str(png), "-o", str(tmp_path / "o.png"), "--box", "1,1,8,8", "--precision", "bf16"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "invalid choice: 'bf16'" in err and "faithful" in err and "fast" in err
    seen = []
    monkeypatch.setattr(segmentation, "segment", lambda image, loaded, **kw: seen.append(kw["precision"])
                        or np.zeros(image.spatial_shape, np.uint8))
    for extra, expected in (([], "faithful"), (["--precision", "fast"], "fast")):
        assert main(["segment", str(png), "-o", str(tmp_path / "o.png"), "--box", "1,1,8,8", *extra]) == 0
        assert seen[-1] == expected


def test_zoom_is_a_validated_choice_passed_to_segment(tmp_path, monkeypatch, capsys):
    import numpy as np
    import imageio.v3 as iio

    import napari_medseg.segmentation as segmentation

    png = tmp_path / "grey.png"
    iio.imwrite(png, np.zeros((16, 16), np.uint8))
    with pytest.raises(SystemExit) as refused:  # one usage error, exit 2, before anything loads
        main(["segment", str(png), "-o", str(tmp_path / "o.png"), "--box", "1,1,8,8", "--zoom", "yes"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "invalid choice: 'yes'" in err and "auto" in err and "off" in err
    seen = []
    monkeypatch.setattr(segmentation, "segment", lambda image, loaded, **kw: seen.append(kw["zoom"])
                        or np.zeros(image.spatial_shape, np.uint8))
    for extra, expected in (([], "auto"), (["--zoom", "on"], "on"), (["--zoom", "off"], "off")):
        assert main(["segment", str(png), "-o", str(tmp_path / "o.png"), "--box", "1,1,8,8", *extra]) == 0
        assert seen[-1] == expected


def test_train_evaluates_faithfully_unless_asked(tmp_path):
    from napari_medseg.cli import build_parser
    from napari_medseg.cli_commands.train import config_from_args

    base = ["train", "--model", "lite-medsam", "--images", str(tmp_path), "--out", str(tmp_path / "run")]
    for extra, expected in (([], "faithful"), (["--precision", "fast"], "fast")):
        args = build_parser(base + extra).parse_args(base + extra)
        assert config_from_args(args)[1].precision == expected
