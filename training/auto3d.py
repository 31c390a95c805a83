"""Automatic 3-D models: Swin SMT trained on 3-D patches.

Volumes are prepared as `napari_medseg.inference.auto3d` prepares them (RAS axis order, the model's
spacing, HU clipped and scaled to [0, 1], cropped to the foreground); patches of exactly the model's
window (its Soft-MoE mixes all tokens of a window) are drawn with foreground oversampling, mirrored,
turned and shifted in intensity as Swin SMT's training pipeline does. Voxels of slices the user did not
review do not count in the loss. Validation runs the real sliding-window predictor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from napari_medseg.progress import Progress

from .auto2d import SegmentationModule, reviewed_voxels
from .datasets import Case, class_names, flip_rotate, random_crop
from .families import Adapter, class_dice, consecutive, head_classes, label_lookup, transfer_weights
from .losses import DiceCELoss

log = logging.getLogger(__name__)
PATCHES_PER_VOLUME = 50  # samples per volume and epoch


@dataclass
class PreparedVolume:
    image: np.ndarray  # (X, Y, Z) float32 in [0, 1], RAS, at the model's spacing, foreground crop
    labels: np.ndarray  # same grid, network output indices
    valid: np.ndarray  # same grid, bool


def new_swin_smt(cases: list[Case], architecture: dict):
    """A new Swin SMT for the data's classes (README config: ``feature_size`` 48, ``use_v2``, 4 experts in 3 stages;
    128^3 windows at 1.5 mm; each unless given)."""
    from napari_medseg.models.loaded import LoadedModel
    from napari_medseg.models.swin_smt import ROI_SIZE, SPACING, SwinSMT, preprocessing_from

    classes = consecutive(class_names(cases))
    network = SwinSMT(in_channels=1, out_channels=len(classes), feature_size=int(architecture.get("feature_size", 48)),
                      use_v2=bool(architecture.get("use_v2", True)), num_experts=int(architecture.get("num_experts", 4)),
                      moe_stages=int(architecture.get("moe_stages", 3)))
    preprocessing = preprocessing_from({"roi_size": architecture.get("roi_size", ROI_SIZE),
                                    "spacing": architecture.get("spacing", SPACING)})
    return LoadedModel(network=network, family="swin_smt", task="auto3d", classes=classes, preprocessing=preprocessing,
                       info={"config": network.config})


def ras_grid(loaded, case: Case, lookup: np.ndarray) -> PreparedVolume:
    """A case on the network's grid, exactly as prediction resamples and normalises it."""
    import torch.nn.functional as F
    from nibabel import orientations

    from napari_medseg.inference.auto3d import _foreground_box, _ras_volume

    volume, spacing, orientation = _ras_volume(loaded, case.image, log.warning)
    to_ras = orientations.ornt_transform(orientation, orientations.axcodes2ornt("RAS"))
    ras = lambda a: orientations.apply_orientation(np.asarray(a).transpose(2, 1, 0), to_ras)  # noqa: E731
    labels, valid = ras(lookup[case.labels]), ras(reviewed_voxels(case))
    pre = loaded.preprocessing
    grid = tuple(max(1, round(n * s / t)) for n, s, t in zip(volume.shape, spacing, pre["spacing"]))
    low, high = pre["clip"]
    with torch.no_grad():
        x = torch.from_numpy(volume)
        if grid != volume.shape:
            x = F.interpolate(x[None, None], size=grid, mode="trilinear", align_corners=False)[0, 0]
        x = ((x - low) / (high - low)).clamp_(0.0, 1.0)
        box = _foreground_box(x) if pre.get("crop_foreground", True) else tuple(slice(0, n) for n in grid)
    nearest = [np.minimum(((np.arange(g) + 0.5) * n / g).astype(np.int64), n - 1) for n, g in zip(volume.shape, grid)]
    labels, valid = labels[np.ix_(*nearest)][box], valid[np.ix_(*nearest)][box]
    return PreparedVolume(x[box].numpy().astype(np.float32), labels.astype(np.int64), valid.astype(bool))


class SwinSMTAdapter(Adapter):
    """Swin SMT: softmax DiceCE on windows of the model's ``roi_size``; saved with `save_swin_smt_checkpoint`."""

    weights_file = "swin_smt.pth"

    def __init__(self, loaded, model_id, device, options=None, data_classes=None):
        super().__init__(loaded, model_id, device, options)
        self.data_classes = dict(data_classes or loaded.classes)
        new = head_classes(loaded.classes, self.data_classes, loaded.network.config["out_channels"])
        if new is not None:
            old = loaded.network
            loaded.network = type(old)(**{**old.config, "out_channels": len(new)})
            transfer_weights(old.state_dict(), loaded.network)
            loaded.classes = new
        self.network, self.classes = loaded.network.to(self.device), dict(loaded.classes)
        self.lookup = label_lookup(self.data_classes, self.classes)
        self.roi = tuple(int(r) for r in loaded.preprocessing["roi_size"])
        self.module = SegmentationModule(self.network, DiceCELoss())

    def prepare(self, train_cases: list[Case], val_cases: list[Case], progress=None, cancel=None) -> None:
        steps = Progress(len(train_cases), "Preparing volumes", progress=progress, cancel=cancel)
        self.volumes = []
        for case in train_cases:
            self.volumes.append(ras_grid(self.loaded, case, self.lookup))
            steps.step()
        self.val_cases = val_cases

    def sample_count(self) -> int:
        return PATCHES_PER_VOLUME * len(self.volumes)

    def validation_count(self) -> int:
        return len(self.val_cases)

    def batch(self, indices: list[int], rngs: list[np.random.Generator]) -> dict:
        images, targets, valids = [], [], []
        for index, rng in zip(indices, rngs):
            volume = self.volumes[index % len(self.volumes)]
            image, valid, labels = random_crop([volume.image, volume.valid], volume.labels, self.roi, rng,
                                               self.options.foreground_oversampling)
            image, labels, valid = flip_rotate([image, labels, valid], rng, 3, rotate=rng.random() < 0.1)
            if rng.random() < 0.2:
                image = image + np.float32(rng.uniform(-0.1, 0.1))
            images.append(image[None])
            targets.append(labels)
            valids.append(valid)
        return {"image": torch.from_numpy(np.stack(images)), "target": torch.from_numpy(np.stack(targets)),
                "valid": torch.from_numpy(np.stack(valids)).float()}

    def validate(self) -> float | None:
        from napari_medseg.inference.auto3d import predict_auto3d

        pairs = []
        for case in self.val_cases:
            predicted = predict_auto3d(self.loaded, case.image, device=self.device, precision=self.options.precision)
            pairs.append((predicted, self.lookup[case.labels], reviewed_voxels(case)))
        return class_dice(pairs, self.classes)

    def input_spec(self) -> dict:
        pre = self.loaded.preprocessing
        return {"channels": 1, "size": list(self.roi), "spacing": list(pre["spacing"]),
                "normalization": f"HU clipped to {list(pre['clip'])}, scaled to [0, 1]"}

    def save(self, path: Path, extra: dict | None = None) -> Path:
        from napari_medseg.models.swin_smt import save_swin_smt_checkpoint

        path.parent.mkdir(parents=True, exist_ok=True)
        plain = {k: v for k, v in (extra or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}
        return save_swin_smt_checkpoint(self.network, path, self.classes, self.loaded.preprocessing["spacing"],
                                        extra=plain, roi_size=self.roi)
