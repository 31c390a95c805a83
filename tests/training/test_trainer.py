"""The training loop: budgets, validation, best checkpoint, early stopping, cancel and exact resume.

The loop is exercised with a small convolutional segmenter of bright disks (a real network and loss,
small enough for the CPU); the model families have their own tests.
"""
import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_medseg.errors import Cancelled, MedsegError
from napari_medseg.training.families import Adapter, atomic_torch_save, class_dice
from napari_medseg.training.losses import DiceCELoss
from napari_medseg.training.metrics import read_metrics
from napari_medseg.training.trainer import TrainConfig, lr_factor, step_indices, train


def disks(count, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :24]
    images, labels = [], []
    for _ in range(count):
        cy, cx, r = rng.uniform(7, 17), rng.uniform(7, 17), rng.uniform(3, 6)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        images.append((mask * 1.0 + rng.normal(0, 0.3, mask.shape)).astype(np.float32))
        labels.append(mask.astype(np.int64))
    return np.stack(images), np.stack(labels)


class DiskModule(nn.Module):
    def __init__(self, network):
        super().__init__()
        self.network, self.loss = network, DiceCELoss()

    def forward(self, batch):
        return self.loss(self.network(batch["image"]), batch["target"])


class DiskAdapter(Adapter):
    family, task, weights_file = "test_disks", "auto2d", "disks.pth"

    def __init__(self, val_scores=None):
        torch.manual_seed(0)
        self.network = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 3, padding=1))
        self.module, self.model_id, self.device = DiskModule(self.network), "disks", torch.device("cpu")
        self.images, self.labels = disks(12, 0)
        self.val_images, self.val_labels = disks(4, 1)
        self.val_scores = val_scores  # fixed validation results (early-stopping test)

    def sample_count(self):
        return len(self.images)

    def batch(self, indices, rngs):
        images, labels = self.images[indices], self.labels[indices]
        flips = [rng.random() < 0.5 for rng in rngs]
        images = np.stack([i[:, ::-1] if f else i for i, f in zip(images, flips)])
        labels = np.stack([lab[:, ::-1] if f else lab for lab, f in zip(labels, flips)])
        return {"image": torch.from_numpy(images)[:, None], "target": torch.from_numpy(labels)}

    def validate(self):
        if self.val_scores is not None:
            return self.val_scores.pop(0)
        predicted = self.network(torch.from_numpy(self.val_images)[:, None]).argmax(1).numpy()
        return class_dice([(predicted, self.val_labels, np.ones_like(self.val_labels, bool))], {0: "bg", 1: "disk"})

    def save(self, path, extra=None):
        return atomic_torch_save(self.network.state_dict(), path)


def test_schedule_and_sample_order():
    config = TrainConfig(warmup=0.1, min_lr_ratio=0.01)
    assert lr_factor(0.05, config) == pytest.approx(0.5)
    assert lr_factor(0.1, config) == pytest.approx(1.0)
    assert lr_factor(1.0, config) == pytest.approx(0.01)
    assert lr_factor(0.55, TrainConfig(warmup=0.1, schedule="poly")) == pytest.approx(0.01 + 0.99 * 0.5 ** 0.9)
    epoch = [step_indices(10, s, 5, 2, 0, 1, seed=3) for s in range(5)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(10))  # one epoch = one permutation
    ranks = [step_indices(10, 0, 5, 2, r, 2, seed=3) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])


def test_training_learns_keeps_best_and_writes_metrics(tmp_path):
    adapter = DiskAdapter()
    result = train(adapter, TrainConfig(epochs=4, batch_size=4, lr=3e-2, warmup=0.1), tmp_path, resume=False)
    assert result.steps == 12 and result.epochs == 4 and result.stopped == "budget"
    assert result.best_dice > 0.8
    metrics = read_metrics(tmp_path / "metrics.json")
    assert metrics["status"] == "trained" and [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert metrics["best"]["dice"] == pytest.approx(result.best_dice)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    saved = torch.load(result.weights, weights_only=True)  # the family file holds the best weights
    assert all(torch.equal(best[k], saved[k]) for k in saved)


def test_cancel_then_resume_gives_the_uninterrupted_result(tmp_path):
    config = dict(steps=9, batch_size=4, lr=1e-2, steps_per_epoch=3, patience=None)
    reference = train(DiskAdapter(), TrainConfig(**config), tmp_path / "straight", resume=False)

    calls = []

    def cancel_after_five():
        calls.append(1)
        return len(calls) > 5  # one check before the first step, then one after each step

    with pytest.raises(Cancelled):
        train(DiskAdapter(), TrainConfig(**config), tmp_path / "cut", cancel=cancel_after_five)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["status"] == "cancelled"
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert saved["step"] == 5 and len(saved["history"]) == 1

    resumed = train(DiskAdapter(), TrainConfig(**config), tmp_path / "cut")
    assert read_metrics(tmp_path / "cut" / "metrics.json")["resumed_at"] == 5
    assert resumed.steps == 9
    assert [h["val_dice"] for h in resumed.history] == pytest.approx([h["val_dice"] for h in reference.history])
    a = torch.load(reference.weights, weights_only=True)
    b = torch.load(resumed.weights, weights_only=True)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    with pytest.raises(MedsegError, match="other data or settings"):
        train(DiskAdapter(), TrainConfig(**{**config, "batch_size": 2}), tmp_path / "cut")


def test_early_stopping_and_time_limit(tmp_path):
    adapter = DiskAdapter(val_scores=[0.5, 0.6, 0.6, 0.6, 0.6, 0.6])
    result = train(adapter, TrainConfig(epochs=6, steps_per_epoch=1, patience=2), tmp_path / "early", resume=False)
    assert result.stopped == "early stopping" and result.epochs == 4 and result.best_epoch == 2

    result = train(DiskAdapter(), TrainConfig(time_limit=0.5, steps_per_epoch=1000, batch_size=2), tmp_path / "timed")
    assert result.stopped == "time limit" and 0 < result.steps < 1000 and len(result.history) == 1


def test_trained_files_get_the_umask_permissions(tmp_path):
    """Checkpoints, the exported model and metrics.json are readable as the umask allows (mkstemp gave 0600)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        result = train(DiskAdapter(), TrainConfig(steps=3, batch_size=4, steps_per_epoch=3), tmp_path, resume=False)
    finally:
        os.umask(old)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert {"best.pt", "last.pt", "metrics.json", str(result.weights.relative_to(tmp_path))} <= set(written)
    assert {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in written} == dict.fromkeys(written, 0o644)
