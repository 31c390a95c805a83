"""Per-family training adapters: what is trained, the training forward and loss, validation Dice,
and saving in the family's own file format (so ``load_checkpoint`` loads the result like an
official file).

An adapter owns the network of a `LoadedModel` and exposes to the trainer:
``module`` (an ``nn.Module`` whose ``forward(batch)`` returns the loss; DDP wraps it),
``prepare(train_cases, val_cases)``, ``sample_count()``, ``batch(indices, rngs)`` (CPU tensors),
``to_device``, ``train_mode``/``eval_mode``, ``param_groups(lr)``, ``validate() -> Dice`` and
``save(path, extra)``. The adapters live in `prompt` (SAM family), `auto2d` and `auto3d`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_medseg.errors import MedsegError

from . import TRAINABLE_FAMILIES

PROMPT_FAMILIES = ("lite_medsam", "sam", "medsam", "lvm_med_vit")
NNUNET_FAMILIES = ("swin_umamba", "swin_umamba_d")


@dataclass
class TrainOptions:
    train_encoder: bool = False  # prompt models: fine-tune the image encoder too (MedSAM, LVM-Med style)
    encoder_lr_ratio: float = 0.1  # encoder learning rate relative to the decoder's
    box_jitter: float = 0.1  # prompt models: each box side moves by up to this fraction of the box
    min_object_pixels: int = 16
    iou_loss_weight: float = 1.0  # prompt models: LiteMedSAM's IoU-head regression
    embedding_cache_gb: float = 4.0  # frozen encoders: embeddings kept in memory up to this size
    foreground_oversampling: float = 0.33  # automatic models: share of patches centred on a label
    architecture: dict = field(default_factory=dict)  # new networks: e.g. feature_size, roi_size, patch_size
    precision: str = "faithful"  # validation predictions: "faithful" (float32) or "fast" (inference's reduced precision)


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def atomic_torch_save(obj, path: Path) -> Path:
    """``torch.save`` through napari_medseg.atomic: durable, never half-written, umask permissions."""
    from napari_medseg.atomic import replacing

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as temp:
        torch.save(obj, temp)
    return path


class Adapter:
    """Common parts; subclasses set ``module``, ``weights_file`` and implement the data side."""

    weights_file = "model.pth"

    def __init__(self, loaded, model_id: str, device, options: TrainOptions | None = None):
        self.loaded, self.network = loaded, loaded.network
        self.family, self.task, self.model_id = loaded.family, loaded.task, model_id
        self.device = torch.device(device)
        self.options = options or TrainOptions()
        self.module: nn.Module | None = None
        self.classes: dict[int, str] = dict(loaded.classes)

    def to_device(self, batch: dict, device) -> dict:
        return _to_device(batch, device)

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": [p for p in self.module.parameters() if p.requires_grad], "lr": lr}]

    def train_mode(self) -> None:
        self.module.train()

    def eval_mode(self) -> None:
        self.module.eval()

    def validation_count(self) -> int:
        return 0

    def input_spec(self) -> dict | None:
        """The model card's ``input`` for the trained model (None: the base model's)."""
        return None


def dice_score(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = predicted.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(predicted, truth).sum() / total)


def class_dice(pairs, classes) -> float | None:
    """Mean over foreground classes of the Dice pooled over (prediction, truth, valid) triples; classes
    absent from every truth and prediction are left out."""
    scores = []
    for value in classes:
        if value == 0:
            continue
        overlap = total = 0
        for predicted, truth, valid in pairs:
            p, t = (predicted == value) & valid, (truth == value) & valid
            overlap += int(np.logical_and(p, t).sum())
            total += int(p.sum() + t.sum())
        if total:
            scores.append(2 * overlap / total)
    return float(np.mean(scores)) if scores else None


# --------------------------------------------------------------------------- classes and heads

def is_generic_name(name: str) -> bool:
    return name.split(" ")[0] in ("label", "class", "object", "foreground") or name.startswith("class_")


def head_classes(model_classes: dict[int, str], data_classes: dict[int, str], heads: int) -> dict[int, str] | None:
    """None when the network's outputs can learn the data's labels as they are (label value = output,
    names agree or the data's are generic); otherwise the consecutive classes a new head needs."""
    fits = all(0 <= v < heads for v in data_classes) and all(
        is_generic_name(name) or model_classes.get(v) == name for v, name in data_classes.items() if v)
    if fits:
        return None
    return consecutive(data_classes)


def consecutive(classes: dict[int, str]) -> dict[int, str]:
    """``classes`` renumbered 0..K-1 in value order (background first)."""
    return {i: classes[v] for i, v in enumerate(sorted(classes))}


def label_lookup(data_classes: dict[int, str], trained: dict[int, str]) -> np.ndarray:
    """Lookup table: data label value -> network output index (by name, else by value)."""
    by_name = {name: i for i, name in trained.items()}
    table = np.zeros(max(data_classes) + 1, dtype=np.int64)
    for value, name in data_classes.items():
        table[value] = by_name.get(name, value if value in trained else 0)
    return table


def transfer_weights(source: dict, network: nn.Module) -> int:
    """Copy every tensor of ``source`` whose name and shape match into ``network`` (a new head stays
    freshly initialised); returns how many tensors were left as initialised."""
    own = network.state_dict()
    kept = {k: v for k, v in source.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    network.load_state_dict({**own, **kept})
    return len(own) - len(kept)


# --------------------------------------------------------------------------- dispatch

def scratch_model(card, cases, backbone: Path | None = None, architecture: dict | None = None):
    """A new network of ``card``'s family shaped for the labelled ``cases`` (optionally on a pretrained backbone)."""
    from . import auto2d, auto3d

    architecture = architecture or {}
    if card.family in NNUNET_FAMILIES:
        return auto2d.new_nnunet_model(card.family, cases, architecture)
    if card.family == "vm_unet":
        return auto2d.new_vm_unet(cases, architecture)
    if card.family == "swin_smt":
        return auto3d.new_swin_smt(cases, architecture)
    if card.family == "lvm_med_unet":
        return auto2d.new_lvm_med_unet(cases, backbone)
    if card.family == "llm_swin_umamba":
        from .text2d import new_llm_swin_umamba

        return new_llm_swin_umamba(cases, architecture)
    raise MedsegError(f"{card.name} cannot be trained from scratch here; start from its weights (--init FILE)")


def make_adapter(loaded, model_id: str, device, options: TrainOptions | None = None,
                 data_classes: dict[int, str] | None = None) -> Adapter:
    """The training adapter of a loaded model's family."""
    if loaded.family not in TRAINABLE_FAMILIES:
        raise MedsegError(f"Training {loaded.family} models is not supported")
    if loaded.family in PROMPT_FAMILIES:
        from .prompt import PromptAdapter

        return PromptAdapter(loaded, model_id, device, options)
    if loaded.family in NNUNET_FAMILIES:
        from .auto2d import NnUNetAdapter

        return NnUNetAdapter(loaded, model_id, device, options, data_classes)
    if loaded.family == "vm_unet":
        from .auto2d import VMUNetAdapter

        return VMUNetAdapter(loaded, model_id, device, options, data_classes)
    if loaded.family == "lvm_med_unet":
        from .auto2d import LvmMedUNetAdapter

        return LvmMedUNetAdapter(loaded, model_id, device, options, data_classes)
    if loaded.family == "llm_swin_umamba":
        from .text2d import TextAdapter

        return TextAdapter(loaded, model_id, device, options, data_classes)
    from .auto3d import SwinSMTAdapter

    return SwinSMTAdapter(loaded, model_id, device, options, data_classes)
