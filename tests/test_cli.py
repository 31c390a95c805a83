import json
import subprocess
import sys

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
    return {"nan": "NaN/infinite voxels replaced", "shear": "sheared", "rgba": "transparency dropped",
            "alpha": "alpha channel dropped", "two": "2 image series", "ct": "read stack"}


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
