"""`medseg segment` over a cohort: mixed folder, a corrupt file, skip/overwrite, manifest."""
import json
import shutil

import numpy as np
import pytest

from napari_medseg.batch import expand_inputs
from napari_medseg.cli import main


@pytest.fixture
def cohort(tmp_path):
    import imageio.v3 as iio
    from pydicom.data import get_testdata_file
    from skimage import data

    root = tmp_path / "cohort"
    (root / "dicom_series").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "dicom_series" / "IM0001")
    iio.imwrite(root / "cells.png", data.cell()[:200, :200])
    iio.imwrite(root / "fundus.jpg", data.retina()[500:800, 500:800])
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    (root / "notes.txt").write_text("not an image")
    return root


def test_expand_inputs(cohort):
    cases = {c.name: c.source.name for c in expand_inputs([str(cohort)])}
    assert cases == {"broken": "broken.nii.gz", "cells": "cells.png", "fundus": "fundus.jpg",
                     "dicom_series": "dicom_series"}
    assert [c.name for c in expand_inputs([str(cohort / "*.png")])] == ["cells"]


def test_batch_keeps_going_and_writes_manifest(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(cohort), "-o", str(out), "--box", "40,40,110,110", "--device", "cpu"])
    assert code == 1  # one case failed
    manifest = json.loads((out / "medseg_run.json").read_text())
    status = {c["name"]: c["status"] for c in manifest["cases"]}
    assert status == {"broken": "failed", "cells": "done", "fundus": "done", "dicom_series": "done"}
    assert manifest["model"] == "lite-medsam" and len(manifest["weights_sha256"]) == 64
    assert manifest["packages"]["torch"]
    written = {p.name for p in out.iterdir()}
    assert {"cells.png", "dicom_series.nii.gz", "fundus.png", "medseg_run.json"} <= written
    assert not any(name.startswith("broken") for name in written)
    stdout = capsys.readouterr().out
    assert "failed: " in stdout and "broken.nii.gz" in stdout
    from napari_medseg.io import read_image

    mask = read_image(out / "cells.png").array
    assert mask.shape == (200, 200) and mask[:40].sum() == 0 and mask.any()

    code = main(["segment", str(cohort / "*.png"), str(cohort / "*.jpg"), "-o", str(out), "--box", "40,40,110,110"])
    assert code == 0
    again = json.loads((out / "medseg_run.json").read_text())
    assert {c["status"] for c in again["cases"]} == {"skipped"}
    code = main(["segment", str(cohort / "cells.png"), "-o", str(out), "--box", "40,40,110,110", "--overwrite",
                 "--format", "nii.gz"])
    assert code == 0 and (out / "cells.nii.gz").is_file()


def test_single_output_file(cohort, tmp_path):
    out = tmp_path / "cells_mask.tif"
    assert main(["segment", str(cohort / "cells.png"), "-o", str(out), "--box", "40,40,110,110"]) == 0
    from napari_medseg.io import read_image

    assert read_image(out).array.shape == (200, 200)


def test_cases_split_over_processes(cohort, tmp_path):
    """--devices runs one process per device (CPU here; CUDA indices on a GPU machine)."""
    out = tmp_path / "split"
    pngs = [str(cohort / "cells.png"), str(cohort / "fundus.jpg")]
    assert main(["segment", *pngs, "-o", str(out), "--box", "40,40,110,110", "--devices", "cpu,cpu"]) == 0
    manifest = json.loads((out / "medseg_run.json").read_text())
    assert sorted(c["name"] for c in manifest["cases"]) == ["cells", "fundus"] and manifest["device"] == "cpu,cpu"


def test_cases_split_under_torchrun(cohort, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "napari_medseg.cli", "segment", str(cohort), "-o", str(out), "--box", "40,40,110,110"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    manifest = json.loads((out / "medseg_run.json").read_text())
    assert result.returncode != 0  # the broken case fails on one rank; rank 0 reports every case
    assert {c["name"]: c["status"] for c in manifest["cases"]} == {
        "broken": "failed", "cells": "done", "fundus": "done", "dicom_series": "done"}
    assert manifest["device"] == "2 ranks"
