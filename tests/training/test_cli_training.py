"""``medseg train`` and ``python -m napari_medseg.training``: from the store or folders to a registered
model that segments; a killed run resumes from its last checkpoint; torchrun with two processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_medseg.cli import main
from napari_medseg.io.image import Image
from napari_medseg.models.registry import get_card
from napari_medseg.training.store import AnnotationStore, write_image_copy
from napari_medseg.training.metrics import read_metrics


def _slices_dataset(mni, folder, indices=(76, 92, 108)):
    """One 2-D image per axial MNI slice in matched-name folders (images/, labels/)."""
    t1, labels = mni
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for index in indices:
        plane = Image(t1.array[index], t1.spacing[:2], t1.origin[:2], np.eye(2), modality="MR")
        write_image_copy(plane, folder / "images" / f"slice{index}.nii.gz")
        write_image_copy(plane.with_array(labels[index]), folder / "labels" / f"slice{index}.nii.gz")
    return folder / "images", folder / "labels"


def test_train_from_store_registers_a_model_that_segments(mni, tmp_path, capsys):
    from napari_medseg.segmentation import segment

    t1, labels = mni
    store = AnnotationStore(tmp_path / "project")
    store.save(t1, labels, classes={1: "white matter"}, reviewed={"all": False, "slices": [70, 85, 100, 115]})
    out = tmp_path / "run"
    code = main(["train", "--from-store", str(store.folder), "--model", "lite-medsam", "--out", str(out),
                 "--steps", "4", "--batch-size", "2", "--lr", "3e-4", "--name", "wm-lite", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    card = get_card("wm-lite")
    assert card.family == "lite_medsam" and card.is_user_model
    provenance = card.provenance
    assert provenance["base_model"] == "lite-medsam" and provenance["steps"] == 4
    assert provenance["data_hash"] and provenance["metrics"]["val_dice_before"] is not None
    assert provenance["data"]["images"] == 1 and provenance["data"]["validation_samples"] == 1
    metrics = read_metrics(out / "metrics.json")
    assert metrics["status"] == "finished" and metrics["model_id"] == "wm-lite"

    mask = segment(t1.array[92], "wm-lite", box=(30, 40, 170, 200))
    assert mask.shape == (233, 197) and 500 < mask.sum() < 233 * 197 // 2


def _training_command(images, labels, out, steps):
    return [sys.executable, "-m", "napari_medseg.training", "--images", str(images), "--labels", str(labels),
            "--model", "lite-medsam", "--out", str(out), "--steps", str(steps), "--steps-per-epoch", "2",
            "--batch-size", "1", "--device", "cpu", "--no-register", "--seed", "3"]


def _training_until(images, labels, out, steps, field) -> subprocess.Popen:
    """A training process started in the background, returned once its metrics file reports ``field``."""
    process = subprocess.Popen(_training_command(images, labels, out, steps), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (read_metrics(out / "metrics.json") or {}).get(field):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    return process


def test_killed_run_resumes_from_its_last_checkpoint(mni, tmp_path):
    images, labels = _slices_dataset(mni, tmp_path / "data")
    out = tmp_path / "run"
    process = _training_until(images, labels, out, 100, "history")
    process.send_signal(signal.SIGKILL)  # no chance to save anything more
    process.wait()
    killed = read_metrics(out / "metrics.json")
    assert killed["status"] == "training" and len(killed["history"]) >= 1
    saved_epochs = len(killed["history"])

    result = subprocess.run(_training_command(images, labels, out, 2 * saved_epochs + 2), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_metrics(out / "metrics.json")
    assert metrics["resumed_at"] == 2 * saved_epochs and metrics["status"] == "finished"
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, saved_epochs + 2))
    assert (out / "model" / "lite_medsam.pth").is_file()


def test_sigterm_cancels_with_a_resumable_state(mni, tmp_path):
    images, labels = _slices_dataset(mni, tmp_path / "data", indices=(80, 100))
    out = tmp_path / "run"
    process = _training_until(images, labels, out, 1000, "step")
    process.terminate()
    assert process.wait(timeout=120) == 130
    metrics = read_metrics(out / "metrics.json")
    assert metrics["status"] == "cancelled" and (out / "last.pt").is_file()


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=pytest.mark.slow),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(_gpus() < 2, reason="needs 2 GPUs")]),
])
def test_torchrun_two_processes(device, mni, tmp_path):
    """Two ranks (gloo on CPUs, NCCL on two GPUs) train one registered model; on GPUs a Swin-UMamba† from
    scratch (the nnU-Net family, DDP over a full network; no packaged weights needed on the GPU machine)."""
    from napari_medseg.segmentation import segment

    images, labels = _slices_dataset(mni, tmp_path / "data", indices=(70, 80, 100, 110))
    out = tmp_path / "run"
    arguments = _training_command(images, labels, out, 4)[3:]
    arguments[arguments.index("--device") + 1] = device
    arguments[arguments.index("--no-register")] = "--name"
    arguments.insert(arguments.index("--name") + 1, "wm-ddp")
    if device == "cuda":
        arguments[arguments.index("--model") + 1] = "swin-umamba-d"
        arguments.append("--scratch")
    result = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "napari_medseg.training", *arguments],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    card = get_card("wm-ddp")
    assert card.provenance["devices"].endswith(" x 2") and card.provenance["steps"] == 4
    assert json.loads((out / "metrics.json").read_text())["samples"] == 3
    prompt = {} if device == "cuda" else {"box": (30, 40, 170, 200)}
    assert segment(mni[0].array[92], "wm-ddp", device=device, **prompt).shape == (233, 197)


def test_arch_values_keep_their_types():
    from napari_medseg.cli_commands.train import _architecture

    assert _architecture(["use_v2=false", "num_experts=32", "spacing=1.5,1.5,2", "name=x"]) == {
        "use_v2": False, "num_experts": 32, "spacing": [1.5, 1.5, 2], "name": "x"}


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--epochs", "-1"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--val-fraction", "1.5"], "--val-fraction must be"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "inf"], "--lr must be a positive number"),
])
def test_bad_training_arguments_are_one_line_before_anything_loads(flags, message, tmp_path, capsys, monkeypatch):
    import napari_medseg.training.pipeline as pipeline

    monkeypatch.setattr(pipeline, "fine_tune", lambda *a, **k: pytest.fail("fine_tune ran"))
    argv = ["train", "--images", str(tmp_path), "--labels", str(tmp_path), "--model", "lite-medsam",
            "--out", str(tmp_path / "run"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_train_out_that_is_a_file_is_refused(tmp_path, capsys, monkeypatch):
    import napari_medseg.training.pipeline as pipeline

    monkeypatch.setattr(pipeline, "fine_tune", lambda *a, **k: pytest.fail("fine_tune ran"))
    out = tmp_path / "run.txt"
    out.write_text("x")
    assert main(["train", "--images", str(tmp_path), "--labels", str(tmp_path), "--model", "lite-medsam",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file" in err, err


def _no_model_may_load(monkeypatch):
    import napari_medseg.training.pipeline as pipeline

    monkeypatch.setattr(pipeline, "initial_model", lambda *a, **k: pytest.fail("the model loaded"))


def _label_folders(tmp_path, label_values):
    import nibabel as nib

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir(parents=True)
    for index, value in enumerate(label_values):
        labels = np.zeros((12, 10, 4), np.int16)
        labels[2:6, 2:6] = value
        nib.save(nib.Nifti1Image(np.ones((12, 10, 4), np.float32), np.eye(4)), tmp_path / "images" / f"c{index}.nii.gz")
        nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "labels" / f"c{index}.nii.gz")
    return tmp_path / "images", tmp_path / "labels"


def test_negative_training_labels_are_refused_not_wrapped(tmp_path, capsys, monkeypatch):
    _no_model_may_load(monkeypatch)
    images, labels = _label_folders(tmp_path, [1, -1])
    assert main(["train", "--images", str(images), "--labels", str(labels), "--model", "lite-medsam",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c1.nii.gz: label value -1 is negative" in err, err


def test_labels_outside_the_datasets_classes_are_refused(tmp_path, capsys, monkeypatch):
    _no_model_may_load(monkeypatch)
    images, labels = _label_folders(tmp_path / "Dataset001", [1, 3])
    (tmp_path / "Dataset001" / "imagesTr").mkdir()
    for path in sorted(images.iterdir()):
        path.rename(tmp_path / "Dataset001" / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz"))
    labels.rename(tmp_path / "Dataset001" / "labelsTr")
    (tmp_path / "Dataset001" / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MR"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 2,
         "file_ending": ".nii.gz"}))
    assert main(["train", "--images", str(tmp_path / "Dataset001"), "--model", "lite-medsam",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c1.nii.gz: label values 3 are not among the dataset's classes" in err, err


def _interrupted_run(images, labels, out, **changes):
    """An --out folder holding a last.pt whose fingerprint matches (or, with ``changes``, differs from) the
    run that ``medseg train --images images --labels labels --model lite-medsam`` starts."""
    import torch

    from napari_medseg.training.datasets import cases_from_folders, data_hash

    out.mkdir()
    fingerprint = {"model": "lite-medsam", "init": "registry", "data": data_hash(cases_from_folders(images, labels)),
                   "val_fraction": 0.2, "batch": 4, "world": 1, **changes}
    torch.save({"fingerprint": fingerprint, "step": 2}, out / "last.pt")
    return out


@pytest.mark.parametrize("damage, message", [
    ("truncated best", "best.pt: best.pt is corrupt or truncated"),
    ("crafted best", "best.pt: best.pt needs arbitrary Python objects"),
    ("list best", "best.pt: it does not hold the state of this run"),
    ("truncated last", "last.pt: last.pt is corrupt or truncated"),
    ("foreign run", "holds a run with other data or settings"),
])
def test_unusable_resume_state_is_one_line_before_the_model_loads(damage, message, tmp_path, capsys, monkeypatch):
    import torch

    _no_model_may_load(monkeypatch)
    images, labels = _label_folders(tmp_path, [1, 1])
    out = _interrupted_run(images, labels, tmp_path / "run", **({"data": "other"} if damage == "foreign run" else {}))
    torch.save({"w": torch.ones(1000)}, out / "best.pt")
    if damage == "truncated best":
        (out / "best.pt").write_bytes((out / "best.pt").read_bytes()[:900])
    elif damage == "crafted best":
        torch.save({"w": Crafted()}, out / "best.pt")
    elif damage == "list best":
        torch.save([1, 2], out / "best.pt")
    elif damage == "truncated last":
        (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:300])
    assert main(["train", "--images", str(images), "--labels", str(labels), "--model", "lite-medsam",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "weights_only" not in err, err


class Crafted:
    pass


def test_a_fine_tune_worse_than_its_start_is_saved_but_not_registered(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import napari_medseg.training.pipeline as pipeline
    import napari_medseg.training.register as register
    from napari_medseg.training.datasets import Case
    from napari_medseg.training.trainer import TrainResult

    class Adapter:  # the parts of a family adapter fine_tune uses, validating at 0.9 before training
        family, task, classes = "lite_medsam", "box2d", {0: "background", 1: "object"}
        prepare = eval_mode = lambda self, *a, **k: None
        sample_count = validation_count = lambda self: 1
        validate = lambda self: 0.9
        input_spec = lambda self: {}

    weights = tmp_path / "run" / "model" / "lite_medsam.pth"
    weights.parent.mkdir(parents=True)  # what train() leaves behind
    monkeypatch.setattr(pipeline, "initial_model", lambda *a, **k: SimpleNamespace(sha256="0" * 64, classes={}))
    monkeypatch.setattr(pipeline, "make_adapter", lambda *a, **k: Adapter())
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: TrainResult(0.5, 1, 1, 4, 1.0, "budget", weights, []))
    registered = []
    monkeypatch.setattr(register, "register_model",
                        lambda *a, **k: registered.append(k["model_id"]) or SimpleNamespace(id=k["model_id"], source="x"))
    image, labels = Image(np.ones((20, 20), np.float32), (1, 1), (0, 0), np.eye(2)), np.eye(20, dtype=np.uint8)
    logged = []
    summary = pipeline.fine_tune("lite-medsam", tmp_path / "run", cases=[Case("c", image, labels)], name="worse",
                                 device="cpu", log=logged.append)
    assert summary["model_id"] is None and registered == []
    assert [m for m in logged if m.startswith("not registered")] == [summary["not_registered"]]
    assert "0.5000 is below the starting model's 0.9000" in summary["not_registered"]
    assert str(weights) in summary["not_registered"] and "--register-worse" in summary["not_registered"]
    assert read_metrics(tmp_path / "run" / "metrics.json")["not_registered"] == summary["not_registered"]
    summary = pipeline.fine_tune("lite-medsam", tmp_path / "run", cases=[Case("c", image, labels)], name="worse",
                                 device="cpu", log=logged.append, register_worse=True)
    assert summary["model_id"] == "worse" and registered == ["worse"]
