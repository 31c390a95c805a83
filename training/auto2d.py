"""Automatic 2-D models: Swin-UMamba and Swin-UMamba† (nnU-Net checkpoints) and VM-UNet.

Training sees slices prepared exactly as `napari_medseg.inference.auto2d` prepares them for
prediction (nnU-Net: transpose, crop to non-zero, the plans' normalisation, in-plane resampling to the
plans' spacing; VM-UNet: its official normalisation and resize), then random patches (nnU-Net's
foreground oversampling), mirroring, quarter turns and intensity changes. Validation runs the real
predictor on the held-out slices. Results are written in each family's own format: an nnU-Net
``checkpoint_final.pth`` (plans and dataset.json inside) or VM-UNet's plain state_dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_medseg.errors import MedsegError
from napari_medseg.progress import Progress

from .datasets import Case, class_names, flip_rotate, intensity_augment, random_crop
from .families import (
    Adapter, atomic_torch_save, class_dice, consecutive, head_classes, label_lookup, transfer_weights,
)
from .losses import BinaryDiceCELoss, DeepSupervisionLoss, DiceCELoss


@dataclass
class PreparedSlices:
    data: np.ndarray  # (N, H, W, C) float32, as the network sees it
    labels: np.ndarray  # (N, H, W) network output indices
    valid: np.ndarray  # (N, H, W) bool: reviewed, inside the image


class SegmentationModule(nn.Module):
    """``forward(batch)``: the loss of the network's output(s) on (image, target, valid)."""

    def __init__(self, network: nn.Module, loss: nn.Module, forward=None):
        super().__init__()
        self.network, self.loss = network, loss
        self._forward = forward

    def forward(self, batch: dict) -> torch.Tensor:
        output = self._forward(batch["image"]) if self._forward else self.network(batch["image"])
        return self.loss(output, batch["target"], batch["valid"])


def set_deep_supervision(network: nn.Module, enabled: bool) -> None:
    for module in network.modules():
        if hasattr(module, "deep_supervision"):
            module.deep_supervision = enabled


def stack_slices(parts: list[PreparedSlices]) -> PreparedSlices:
    """All cases' slices in one array; planes of different sizes (images of other sizes, crops to the
    nonzero region) are padded at the end with zeros, outside the valid mask so the loss ignores them."""
    height, width = (max(p.labels.shape[axis] for p in parts) for axis in (1, 2))

    def padded(array: np.ndarray) -> np.ndarray:
        widths = [(0, 0), (0, height - array.shape[1]), (0, width - array.shape[2])] + [(0, 0)] * (array.ndim - 3)
        return np.pad(array, widths)
    return PreparedSlices(*(np.concatenate([padded(getattr(p, f)) for p in parts]) for f in ("data", "labels", "valid")))


def reviewed_voxels(case: Case) -> np.ndarray:
    """Boolean mask of the label map's voxels on reviewed slices."""
    mask = case.reviewed_mask()
    return np.broadcast_to(mask.reshape((-1,) + (1,) * (case.ndim - 1)), case.labels.shape) if case.ndim == 3 \
        else np.ones(case.labels.shape, bool)


class DeepSupervisionModes:
    """Adapter modes of nnU-Net-style networks: deep-supervision heads on while training only."""

    network: nn.Module

    def train_mode(self) -> None:
        self.network.train()
        set_deep_supervision(self.network, True)

    def eval_mode(self) -> None:
        self.network.eval()
        set_deep_supervision(self.network, False)


class SliceAdapter(Adapter):
    """Shared data side of the automatic 2-D families; subclasses prepare slices and save files."""

    patch_size: tuple[int, int]

    def __init__(self, loaded, model_id, device, options=None, data_classes=None):
        super().__init__(loaded, model_id, device, options)
        self.data_classes = dict(data_classes or loaded.classes)
        new = head_classes(loaded.classes, self.data_classes, self.heads())
        if new is not None:
            self.replace_head(new)
        self.classes = dict(self.loaded.classes)
        self.lookup = label_lookup(self.data_classes, self.classes)
        self.network = self.loaded.network.to(self.device)

    def heads(self) -> int:
        return len(self.loaded.classes)

    def replace_head(self, classes: dict[int, str]) -> None:
        raise NotImplementedError

    def prepare(self, train_cases: list[Case], val_cases: list[Case], progress=None, cancel=None) -> None:
        steps = Progress(len(train_cases), "Preparing slices", progress=progress, cancel=cancel)
        parts = []
        for case in train_cases:
            parts.append(self.prepare_case(case))
            steps.step()
        self.train = stack_slices(parts)
        self.samples = np.flatnonzero(self.train.valid.reshape(len(self.train.valid), -1).any(axis=1)).tolist()
        self.val_cases = val_cases

    def prepare_case(self, case: Case) -> PreparedSlices:
        raise NotImplementedError

    def sample_count(self) -> int:
        return len(self.samples)

    def validation_count(self) -> int:
        return sum(len(case.slices()) for case in self.val_cases)

    def batch(self, indices: list[int], rngs: list[np.random.Generator]) -> dict:
        images, targets, valids = [], [], []
        for index, rng in zip(indices, rngs):
            n = self.samples[index]
            image, valid, labels = random_crop([self.train.data[n], self.train.valid[n]], self.train.labels[n],
                                               self.patch_size, rng, self.options.foreground_oversampling)
            image, labels, valid = flip_rotate([image, labels, valid], rng, 2)
            images.append(intensity_augment(image, rng).transpose(2, 0, 1))
            targets.append(labels)
            valids.append(valid)
        return {"image": torch.from_numpy(np.stack(images)), "target": torch.from_numpy(np.stack(targets)).long(),
                "valid": torch.from_numpy(np.stack(valids)).float()}

    def validate(self) -> float | None:
        from napari_medseg.inference.auto2d import predict_auto2d

        pairs = []
        for case in self.val_cases:
            predicted = predict_auto2d(self.loaded, case.image, device=self.device, slices=self.validation_slices(case),
                                       mirroring=False,  # as nnU-Net's per-epoch validation
                                       precision=self.options.precision)
            pairs.append((predicted, self.lookup[case.labels], reviewed_voxels(case)))
        return class_dice(pairs, self.classes)

    def validation_slices(self, case: Case):
        return None if case.ndim == 2 else case.slices()


# --------------------------------------------------------------------------- nnU-Net families

def _unique_names(classes: dict[int, str]) -> dict[str, int]:
    names: dict[str, int] = {}
    for value, name in sorted(classes.items()):
        names[name if name not in names else f"{name} ({value})"] = value
    names = {("background" if v == 0 else k): v for k, v in names.items()}
    return names


def _nnunet_network(family: str, channels: int, heads: int) -> nn.Module:
    from napari_medseg.models.swin_umamba import SwinUMamba, SwinUMambaD

    return SwinUMamba(channels, heads) if family == "swin_umamba" else SwinUMambaD(channels, heads)


def _nnunet_record(loaded) -> dict:
    """plans, configuration, dataset.json, trainer and mirror axes of the model's checkpoint."""
    if "nnunet" in loaded.info:
        return loaded.info["nnunet"]
    from napari_medseg.models.checkpoint import read_checkpoint
    from napari_medseg.models.nnunet_checkpoint import parse_nnunet_checkpoint

    checkpoint = parse_nnunet_checkpoint(read_checkpoint(loaded.path), loaded.path)
    return {"plans": checkpoint.plans, "configuration": checkpoint.configuration_name,
            "dataset_json": checkpoint.dataset_json, "trainer_name": checkpoint.trainer_name,
            "mirror_axes": list(checkpoint.mirror_axes)}


def _intensity_properties(values: np.ndarray) -> dict:
    values = values.astype(np.float64)
    return {"max": float(values.max()), "mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "percentile_00_5": float(np.percentile(values, 0.5)),
            "percentile_99_5": float(np.percentile(values, 99.5)), "std": float(values.std())}


def nnunet_plans(cases: list[Case], classes: dict[int, str], patch: list[int], trainer: str) -> tuple[dict, dict]:
    """(checkpoint record, preprocessing) of nnU-Net 2-D plans made from the data: median in-plane spacing,
    CTNormalization with the labelled voxels' statistics for CT, z-scores otherwise."""
    from napari_medseg.inference.auto2d import channels_first
    from napari_medseg.models.nnunet_checkpoint import NnUNetCheckpoint

    first = cases[0].image
    channels = 1 if first.channel_axis is None else first.array.shape[first.channel_axis]
    planes = np.array([c.labels.shape[-2:] for c in cases])
    spacings = np.array([c.image.spacing[::-1][-2:] for c in cases])
    ct = first.modality == "CT" or first.intensity == "HU"
    properties = {}
    for c in range(channels):
        values = np.concatenate([channels_first(case.image, channels, None)[c][case.labels > 0][::7] for case in cases])
        properties[str(c)] = _intensity_properties(values if values.size else np.zeros(1))
    configuration = {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 12,
        "patch_size": [int(p) for p in patch], "median_image_size_in_voxels": [int(v) for v in np.median(planes, axis=0)],
        "spacing": [float(v) for v in np.median(spacings, axis=0)],
        "normalization_schemes": ["CTNormalization" if ct else "ZScoreNormalization"] * channels,
        "use_mask_for_norm": [False] * channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": True,
    }
    plans = {"dataset_name": "napari_medseg", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"2d": configuration}, "experiment_planner_used": "napari-medseg",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": properties}
    modality = "CT" if ct else (first.modality if first.modality != "unknown" else "image")
    dataset_json = {"name": "napari_medseg", "channel_names": {str(c): modality for c in range(channels)},
                    "labels": _unique_names(classes), "numTraining": len(cases), "file_ending": ".nii.gz"}
    record = {"plans": plans, "configuration": "2d", "dataset_json": dataset_json, "trainer_name": trainer,
              "mirror_axes": [0, 1]}
    preprocessing = NnUNetCheckpoint({}, trainer, plans, "2d", configuration, dataset_json, "all", (0, 1), 0).preprocessing()
    return record, preprocessing


def new_nnunet_model(family: str, cases: list[Case], architecture: dict):
    """A new Swin-UMamba(†) with nnU-Net 2-D plans made from the data (spacing, patch, normalisation)."""
    from napari_medseg.models.loaded import LoadedModel

    classes = consecutive(class_names(cases))
    first = cases[0].image
    channels = 1 if first.channel_axis is None else first.array.shape[first.channel_axis]
    median = np.median(np.array([c.labels.shape[-2:] for c in cases]), axis=0)
    patch = [int(p) for p in architecture.get("patch_size", [min(256, max(64, -(-int(s) // 32) * 32)) for s in median])]
    if any(p % 32 for p in patch):
        raise MedsegError(f"patch_size {patch} must be multiples of 32 for {family}")
    trainer = "nnUNetTrainerSwinUMambaScratch" if family == "swin_umamba" else "nnUNetTrainerSwinUMambaDScratch"
    record, preprocessing = nnunet_plans(cases, classes, patch, trainer)
    return LoadedModel(network=_nnunet_network(family, channels, len(classes)), family=family, task="auto2d",
                       classes=classes, preprocessing=preprocessing, info={"nnunet": record})


class NnUNetAdapter(DeepSupervisionModes, SliceAdapter):
    """Swin-UMamba and Swin-UMamba†: nnU-Net's DiceCE with deep supervision (lowest head weighted 0)."""

    weights_file = "checkpoint_final.pth"

    def __init__(self, loaded, model_id, device, options=None, data_classes=None):
        if loaded.preprocessing.get("output") != "softmax":
            raise MedsegError("Region-based (sigmoid) nnU-Net models cannot be fine-tuned here")
        self.record = _nnunet_record(loaded)
        super().__init__(loaded, model_id, device, options, data_classes)
        self.patch_size = tuple(self.loaded.preprocessing["patch_size"])
        self.module = SegmentationModule(self.network, DeepSupervisionLoss(DiceCELoss()))

    def replace_head(self, classes: dict[int, str]) -> None:
        old = self.loaded.network
        channels = len(self.loaded.preprocessing["channels"])
        network = _nnunet_network(self.family, channels, len(classes))
        transfer_weights(old.state_dict(), network)
        self.record = {**self.record, "dataset_json": {**self.record["dataset_json"], "labels": _unique_names(classes)}}
        self.loaded.network, self.loaded.classes = network, classes

    def prepare_case(self, case: Case) -> PreparedSlices:
        from napari_medseg.inference.auto2d import channels_first, crop_to_nonzero, normalize
        from napari_medseg.inference.nnunet_resampling import Resampling, new_shape
        from skimage.transform import resize

        pre = self.loaded.preprocessing
        data = channels_first(case.image, len(pre["channels"]), pre["channels"])
        labels, valid = self.lookup[case.labels], reviewed_voxels(case)
        spacing = list(case.image.spacing[::-1])
        if case.ndim == 2:
            data, labels, valid, spacing = data[:, None], labels[None], valid[None], [999.0] + spacing
        transpose = pre["transpose_forward"]
        data = data.transpose([0, *[i + 1 for i in transpose]])
        labels, valid = labels.transpose(transpose), valid.transpose(transpose)
        spacing = [spacing[i] for i in transpose]
        if pre["crop_to_nonzero"]:
            data, box, mask = crop_to_nonzero(data, pre["normalization"])
            labels, valid = labels[box], valid[box]
        else:
            mask = None
        normalize(data, mask, pre["normalization"])
        target = [spacing[0], *pre["spacing"]]
        resampling = Resampling.from_spec(pre["resampling_data"], data.shape[2:],
                                          new_shape(data.shape[1:], spacing, target)[1:], spacing, target)
        shape, bounds = resampling.out_shape, resampling.bounds(data)  # the network's input, as at inference
        keep = np.flatnonzero(valid.reshape(len(valid), -1).any(axis=1))
        planes = np.stack([np.moveaxis(resampling(data[:, z], bounds), 0, -1) for z in keep])
        nearest = lambda a, z: resize(a[z].astype(np.float64), shape, 0, mode="edge", anti_aliasing=False)  # noqa: E731
        return PreparedSlices(planes.astype(np.float32), np.stack([nearest(labels, z) for z in keep]).astype(np.int64),
                              np.stack([nearest(valid, z) for z in keep]) > 0.5)

    def validation_slices(self, case: Case):
        return None if case.ndim == 2 or self.loaded.preprocessing["transpose_forward"][0] != 0 else case.slices()

    def input_spec(self) -> dict:
        pre = self.loaded.preprocessing
        return {"channels": len(pre["channels"]), "size": list(pre["patch_size"]),
                "normalization": "nnU-Net plans in the checkpoint"}

    def save(self, path: Path, extra: dict | None = None) -> Path:
        return save_nnunet_network(self.network, self.record, path, extra)


# --------------------------------------------------------------------------- VM-UNet

def new_vm_unet(cases: list[Case], architecture: dict):
    """A new VM-UNet: one sigmoid output for binary RGB data (ISIC set-up), softmax classes otherwise."""
    from napari_medseg.models.loaded import LoadedModel
    from napari_medseg.models.vm_unet import VMUNet, preprocessing_for

    classes = consecutive(class_names(cases))
    rgb = cases[0].image.is_rgb
    outputs = 1 if rgb and len(classes) == 2 else len(classes)
    embed = int(architecture.get("embed_dim", 96))
    network = VMUNet(3, outputs, architecture.get("depths", (2, 2, 2, 2)), architecture.get("depths_decoder", (2, 2, 2, 1)),
                     dims=tuple(embed * 2 ** i for i in range(4)))
    return LoadedModel(network=network, family="vm_unet", task="auto2d", classes=classes,
                       preprocessing=preprocessing_for(outputs))


class VMUNetAdapter(SliceAdapter):
    """VM-UNet: whole slices at the training size; BCE + Dice for the 1-output (ISIC) form, DiceCE otherwise."""

    weights_file = "best.pth"

    def __init__(self, loaded, model_id, device, options=None, data_classes=None):
        super().__init__(loaded, model_id, device, options, data_classes)
        self.patch_size = tuple(self.loaded.preprocessing["input_size"])
        binary = self.network.num_classes == 1
        loss = _BinaryTarget(BinaryDiceCELoss()) if binary else DiceCELoss()
        self.module = SegmentationModule(self.network, loss, forward=self._logits)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """VMUNet's forward without the final sigmoid of the 1-output form (the loss takes logits)."""
        return self.network.vmunet(x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x)

    def heads(self) -> int:
        return max(2, self.loaded.network.num_classes)

    def replace_head(self, classes: dict[int, str]) -> None:
        from napari_medseg.models.vm_unet import VMUNet, preprocessing_for

        old = self.loaded.network
        info = self.loaded.info
        dims = tuple(old.vmunet.patch_embed.proj.out_channels * 2 ** i for i in range(4))
        network = VMUNet(3, len(classes), info.get("depths", (2, 2, 2, 2)), info.get("depths_decoder", (2, 2, 2, 1)),
                         dims=dims, patch_size=old.vmunet.patch_embed.proj.kernel_size[0])
        transfer_weights(old.state_dict(), network)
        self.loaded.network, self.loaded.classes = network, classes
        self.loaded.preprocessing = preprocessing_for(len(classes))

    def prepare_case(self, case: Case) -> PreparedSlices:
        from scipy.ndimage import zoom

        from napari_medseg.inference.auto2d import _vm_unet_input, channels_first

        pre = self.loaded.preprocessing
        channels = 3 if pre["rgb"] and case.image.channel_axis is not None else 1
        data = channels_first(case.image, channels, ("R", "G", "B") if channels == 3 else ("grey",))
        labels, valid = self.lookup[case.labels], reviewed_voxels(case)
        if case.ndim == 2:
            data, labels, valid = data[:, None], labels[None], valid[None]
        size = tuple(pre["input_size"])
        keep = np.flatnonzero(valid.reshape(len(valid), -1).any(axis=1))
        factors = [t / s for t, s in zip(size, labels.shape[1:])]
        planes = np.stack([_vm_unet_input(data[:, z], pre, size).transpose(1, 2, 0) for z in keep])
        return PreparedSlices(planes.astype(np.float32), np.stack([zoom(labels[z], factors, order=0) for z in keep]),
                              np.stack([zoom(valid[z].astype(np.uint8), factors, order=0) for z in keep]) > 0)

    def input_spec(self) -> dict:
        pre = self.loaded.preprocessing
        return {"channels": 3 if pre["rgb"] else 1, "size": list(pre["input_size"]), "normalization": pre["normalization"]}

    def save(self, path: Path, extra: dict | None = None) -> Path:
        return atomic_torch_save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, path)


class _BinaryTarget(nn.Module):
    """Label indices -> the foreground mask a 1-output network learns."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits, target, valid):
        return self.loss(logits, (target == 1).float()[:, None], valid[:, None])


# --------------------------------------------------------------------------- LVM-Med ResNet-50 U-Net

def new_lvm_med_unet(cases: list[Case], backbone: Path | None = None):
    """LVM-Med's U-Net for the data's classes: on the LVM-Med ResNet-50 backbone, or all new (``backbone`` None)."""
    from napari_medseg.models import lvm_med_unet
    from napari_medseg.models.families import load_checkpoint
    from napari_medseg.models.loaded import LoadedModel

    classes = consecutive(class_names(cases))
    first = cases[0].image
    channels = 3 if first.is_rgb else 1
    if backbone is not None:
        return load_checkpoint(backbone, family="lvm_med_unet", classes=classes, in_channels=channels)
    import segmentation_models_pytorch as smp

    network = smp.Unet("resnet50", encoder_weights=None, in_channels=channels, classes=len(classes))
    return LoadedModel(network=network, family="lvm_med_unet", task="auto2d", classes=classes,
                       preprocessing=lvm_med_unet.preprocessing(256, channels))


class LvmMedUNetAdapter(SliceAdapter):
    """LVM-Med's ResNet-50 U-Net: whole slices as LVM-Med feeds them (nearest resize, min-max 0..255), DiceCE."""

    weights_file = "lvm_med_unet.pth"

    def __init__(self, loaded, model_id, device, options=None, data_classes=None):
        super().__init__(loaded, model_id, device, options, data_classes)
        size = int(self.loaded.preprocessing["image_size"])
        self.patch_size = (size, size)
        self.module = SegmentationModule(self.network, DiceCELoss())

    def replace_head(self, classes: dict[int, str]) -> None:
        import segmentation_models_pytorch as smp

        old = self.loaded.network
        network = smp.Unet("resnet50", encoder_weights=None, in_channels=old.encoder.conv1.in_channels,
                           classes=len(classes))
        transfer_weights(old.state_dict(), network)
        self.loaded.network, self.loaded.classes = network, classes

    def prepare_case(self, case: Case) -> PreparedSlices:
        from skimage.transform import resize

        from napari_medseg.models.lvm_med_unet import prepare_input

        pre = self.loaded.preprocessing
        size, channels = int(pre["image_size"]), int(pre["in_channels"])
        labels, valid = self.lookup[case.labels], reviewed_voxels(case)
        planes = [(case.plane(z)[0], labels[z] if z is not None else labels, valid[z] if z is not None else valid)
                  for z in case.slices()]
        nearest = lambda a: resize(a, (size, size), order=0, preserve_range=True, anti_aliasing=False)  # noqa: E731
        return PreparedSlices(np.stack([prepare_input(p, channels, size).transpose(1, 2, 0) for p, _, _ in planes]),
                              np.stack([nearest(lab).astype(np.int64) for _, lab, _ in planes]),
                              np.stack([nearest(v.astype(np.uint8)) > 0 for _, _, v in planes]))

    def validate(self) -> float | None:
        """LVM-Med's own evaluation: each slice as `prepare_input` feeds it, arg-max, nearest back to the slice
        (`inference.auto2d` has no LVM-Med path yet; switch to ``predict_auto2d`` once it has)."""
        from skimage.transform import resize

        from napari_medseg.inference.precision import Precision, policy_dtype
        from napari_medseg.models.lvm_med_unet import prepare_input

        pre = self.loaded.preprocessing
        run = Precision(self.device, policy_dtype(self.options.precision, None, self.device))  # as predict_auto2d
        pairs = []
        for case in self.val_cases:
            for z in case.slices():
                image, labels = case.plane(z)
                x = torch.from_numpy(prepare_input(image, int(pre["in_channels"]), int(pre["image_size"])))
                predicted = run(self.network, x[None].to(self.device)).argmax(1)[0].cpu().numpy()
                predicted = resize(predicted, labels.shape, order=0, preserve_range=True, anti_aliasing=False)
                pairs.append((predicted.astype(np.int64), self.lookup[labels], np.ones(labels.shape, bool)))
        return class_dice(pairs, self.classes)

    def input_spec(self) -> dict:
        pre = self.loaded.preprocessing
        return {"channels": int(pre["in_channels"]), "size": int(pre["image_size"]), "normalization": pre["intensity"]}

    def save(self, path: Path, extra: dict | None = None) -> Path:
        return atomic_torch_save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, path)


def save_nnunet_network(network, record: dict, path: Path, extra: dict | None = None,
                        top_level: dict | None = None) -> Path:
    """An nnU-Net-family network saved atomically as ``checkpoint_final.pth`` from its source ``record``
    (trainer name, plans, configuration, dataset.json, mirror axes); ``top_level`` adds entries such as
    the text tower's metadata."""
    from napari_medseg.models.nnunet_checkpoint import save_nnunet_checkpoint

    from napari_medseg.atomic import replacing

    set_deep_supervision(network, False)
    with replacing(path) as temp:
        save_nnunet_checkpoint(temp, network.state_dict(), trainer_name=record["trainer_name"], plans=record["plans"],
                               configuration=record["configuration"], dataset_json=record["dataset_json"],
                               epoch=int((extra or {}).get("steps", 0)), mirror_axes=record["mirror_axes"],
                               logging={"napari_medseg": dict(extra or {})}, extra=top_level)
    return path
