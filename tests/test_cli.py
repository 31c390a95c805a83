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


def test_train_evaluates_faithfully_unless_asked(tmp_path):
    from napari_medseg.cli import build_parser
    from napari_medseg.cli_commands.train import config_from_args

    base = ["train", "--model", "lite-medsam", "--images", str(tmp_path), "--out", str(tmp_path / "run")]
    for extra, expected in (([], "faithful"), (["--precision", "fast"], "fast")):
        args = build_parser(base + extra).parse_args(base + extra)
        assert config_from_args(args)[1].precision == expected
