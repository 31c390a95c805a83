"""Text-guided lesion models (LLM-Swin-UMamba): each labelled object of a reviewed slice, with its
image's report text, becomes a lesion-centred crop exactly as `napari_medseg.inference.text2d` builds
it (the model's intensity mapping, a 256-pixel crop around a jittered box, nnU-Net's crop to non-zero,
normalisation and centred padding). The text tower is trained end to end, as the authors do.
Results are nnU-Net checkpoints with the project's ``"medseg"`` entry naming the text tower.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_medseg.errors import MedsegError

from .auto2d import DeepSupervisionModes, _nnunet_record, _unique_names, nnunet_plans, save_nnunet_network
from .datasets import Case, box_of, class_names, jittered_box, object_samples
from .families import Adapter, consecutive, dice_score, head_classes, label_lookup
from .losses import DeepSupervisionLoss, DiceCELoss

TRAINER = "nnUNetTrainerSwinUMamba"  # the official LLM-Swin-UMamba trainer


def new_llm_swin_umamba(cases: list[Case], architecture: dict):
    """A new LLM-Swin-UMamba with the offline MiniLM text tower and plans made from the data."""
    from napari_medseg.models.llm_swin_umamba import CROP_SIZE, CT_WINDOW, new_network
    from napari_medseg.models.loaded import LoadedModel

    classes = consecutive(class_names(cases))
    record, preprocessing = nnunet_plans(cases, classes, [CROP_SIZE, CROP_SIZE], TRAINER)
    preprocessing.update(crop_size=CROP_SIZE, ct_window=list(CT_WINDOW), eight_bit=False)
    network = new_network(1, len(classes), architecture.get("pooling", "max"))
    return LoadedModel(network=network, family="llm_swin_umamba", task="text2d", classes=classes,
                       preprocessing=preprocessing, info={"nnunet": record})


class TextModule(nn.Module):
    def __init__(self, network):
        super().__init__()
        self.network, self.loss = network, DeepSupervisionLoss(DiceCELoss())
        self.has_unused_parameters = True  # the bottleneck projection and weight_proj are never called

    def forward(self, batch: dict) -> torch.Tensor:
        network = self.network
        tokens = network.tokenizer(batch["reports"])
        ids, mask = network.report_inputs(tokens)
        outputs = network.segment(batch["image"], network.text_encoder(ids, mask))
        return self.loss(outputs, batch["target"], batch["valid"])


class TextAdapter(DeepSupervisionModes, Adapter):
    weights_file = "checkpoint_final.pth"

    def __init__(self, loaded, model_id, device, options=None, data_classes=None):
        from napari_medseg.models.swin_umamba import FEATURES, OutBlock

        super().__init__(loaded, model_id, device, options)
        self.record = _nnunet_record(loaded)
        self.data_classes = dict(data_classes or loaded.classes)
        new = head_classes(loaded.classes, self.data_classes, len(loaded.classes))
        if new is not None:
            loaded.network.out_layers = nn.ModuleList(OutBlock(FEATURES[i], len(new)) for i in range(4))
            loaded.classes = new
            self.record = {**self.record, "dataset_json": {**self.record["dataset_json"], "labels": _unique_names(new)}}
        self.network, self.classes = loaded.network.to(self.device), dict(loaded.classes)
        self.lookup = label_lookup(self.data_classes, self.classes)
        self.size = int(loaded.preprocessing["crop_size"])
        self.module = TextModule(self.network)

    def prepare(self, train_cases: list[Case], val_cases: list[Case], progress=None, cancel=None) -> None:
        def with_reports(cases):
            return [c for c in cases if c.report.strip()]

        self.train_cases, self.val_cases = with_reports(train_cases), with_reports(val_cases)
        if not self.train_cases:
            raise MedsegError("Text-guided models learn from report text: add a report to the labelled images")
        self.train_samples = object_samples(self.train_cases, self.options.min_object_pixels)
        self.val_samples = object_samples(self.val_cases, self.options.min_object_pixels)

    def sample_count(self) -> int:
        return len(self.train_samples)

    def validation_count(self) -> int:
        return len(self.val_samples)

    def crop(self, case: Case, index, value: int, box) -> tuple[np.ndarray, np.ndarray]:
        """(normalised, padded crop, its lesion mask) as the predictor prepares a crop around ``box``."""
        from skimage.transform import resize

        from napari_medseg.inference.text2d import Crop, _plane, model_pixels, nonzero_box, normalize

        pre = self.loaded.preprocessing
        plane = _plane(case.image, index)
        pixels, outside = model_pixels(plane, case.image, pre, None)
        _, labels = case.plane(index)
        crop = Crop.around(box, plane.shape[:2], self.size)
        patch, mask = crop.take(pixels, outside), crop.take((self.lookup[labels] == value).astype(np.float32), 0.0)
        if crop.side != self.size:
            patch = resize(patch, (self.size, self.size), order=1, preserve_range=True, anti_aliasing=True)
            mask = resize(mask, (self.size, self.size), order=1)
        image, target = np.zeros((2, self.size, self.size), np.float32)
        inner = nonzero_box(patch)
        if inner is not None:
            values = normalize(patch[inner], pre["normalization"][0])
            below = [(self.size - s.stop + s.start) // 2 for s in inner]
            place = tuple(slice(b, b + s.stop - s.start) for b, s in zip(below, inner))
            image[place], target[place] = values, mask[inner] > 0.5
        return image, target

    def batch(self, indices: list[int], rngs: list[np.random.Generator]) -> dict:
        images, targets, reports = [], [], []
        for index, rng in zip(indices, rngs):
            c, z, value = self.train_samples[index]
            case = self.train_cases[c]
            _, labels = case.plane(z)
            box = jittered_box(labels == value, rng, self.options.box_jitter)
            image, target = self.crop(case, z, int(self.lookup[value]), box)
            for axis in (0, 1):  # nnU-Net's mirroring
                if rng.random() < 0.5:
                    image, target = np.flip(image, axis), np.flip(target, axis)
            images.append(np.ascontiguousarray(image)[None])
            targets.append(np.ascontiguousarray(target))
            reports.append(case.report)
        return {"image": torch.from_numpy(np.stack(images)), "target": torch.from_numpy(np.stack(targets)).long(),
                "valid": torch.ones(len(images), self.size, self.size), "reports": reports}

    def validate(self) -> float | None:
        from napari_medseg.inference.text2d import predict_text2d

        scores = []
        for c, z, value in self.val_samples:
            case = self.val_cases[c]
            truth = case.plane(z)[1] == value
            box = tuple(box_of(truth)) + (() if z is None else (z,))
            predicted = predict_text2d(self.loaded, case.image, case.report, box=box, device=self.device,
                                       precision=self.options.precision)
            scores.append(dice_score((predicted if z is None else predicted[z]) > 0, truth))
        return float(np.mean(scores)) if scores else None

    def input_spec(self) -> dict:
        return {"channels": 1, "size": self.size, "normalization": "nnU-Net plans in the checkpoint; report text"}

    def save(self, path: Path, extra: dict | None = None) -> Path:
        from napari_medseg.models.llm_swin_umamba import METADATA_KEY, checkpoint_metadata

        return save_nnunet_network(self.network, self.record, path, extra,
                                   top_level={METADATA_KEY: checkpoint_metadata(self.network)})
