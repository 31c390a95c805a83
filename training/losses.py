"""Segmentation losses: nnU-Net's soft Dice + cross-entropy (with deep supervision) and the sigmoid
Dice + BCE that MedSAM, LiteMedSAM and LVM-Med fine-tune SAM-family decoders with.

Every loss takes an optional ``valid`` mask (1 where the label is known): voxels of slices the user
did not review, or padding, do not count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return values.mean()
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def soft_dice(probabilities: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None,
              smooth: float = 1e-5, squared: bool = False) -> torch.Tensor:
    """Per-channel soft Dice over the whole batch (nnU-Net's batch Dice): (C,) in [0, 1]."""
    if valid is not None:
        probabilities, targets = probabilities * valid, targets * valid
    dims = [0, *range(2, probabilities.ndim)]
    intersection = (probabilities * targets).sum(dims)
    if squared:
        total = (probabilities ** 2).sum(dims) + (targets ** 2).sum(dims)
    else:
        total = probabilities.sum(dims) + targets.sum(dims)
    return (2 * intersection + smooth) / (total + smooth).clamp_min(1e-8)


class DiceCELoss(nn.Module):
    """Softmax cross-entropy + (1 - mean soft Dice of the foreground classes), as nnU-Net trains.

    ``logits`` (B, C, ...), ``target`` (B, ...) or (B, 1, ...) integer labels.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5):
        super().__init__()
        self.dice_weight, self.ce_weight, self.smooth = dice_weight, ce_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if target.ndim == logits.ndim:
            target = target[:, 0]
        target = target.long()
        logits = logits.float()
        mask = None if valid is None else (valid[:, 0] if valid.ndim == logits.ndim else valid).float()
        ce = _masked_mean(F.cross_entropy(logits, target, reduction="none"), mask)
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
        dice = soft_dice(logits.softmax(1), onehot, None if mask is None else mask[:, None], self.smooth)
        return self.ce_weight * ce + self.dice_weight * (1 - dice[1:].mean())


class BinaryDiceCELoss(nn.Module):
    """Sigmoid BCE + soft Dice with squared denominators (MedSAM / LVM-Med decoder fine-tuning)."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5):
        super().__init__()
        self.dice_weight, self.ce_weight, self.smooth = dice_weight, ce_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        ce = _masked_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), valid)
        # per-sample Dice (each sample is its own object), then averaged
        probabilities = logits.sigmoid()
        if valid is not None:
            probabilities, target = probabilities * valid, target * valid
        dims = tuple(range(1, logits.ndim))
        intersection = (probabilities * target).sum(dims)
        total = (probabilities ** 2).sum(dims) + (target ** 2).sum(dims)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        return self.ce_weight * ce + self.dice_weight * (1 - dice).mean()


def deep_supervision_weights(count: int) -> list[float]:
    """nnU-Net's weights for outputs from full to lowest resolution: 1/2^i, the lowest 0, normalised."""
    weights = [1 / 2 ** i for i in range(count)]
    if count > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    """A loss applied to every output of a deep-supervised network (full resolution first), with the
    target (and valid mask) downsampled by nearest neighbour to each output's size."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, outputs, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target, valid)
        weights = deep_supervision_weights(len(outputs))
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for output, weight in zip(outputs, weights):  # weight-0 heads stay in the graph (DDP needs every output used)
            total = total + weight * self.loss(output, _resize_like(target, output), _resize_like(valid, output))
        return total


def _resize_like(tensor: torch.Tensor | None, output: torch.Tensor) -> torch.Tensor | None:
    if tensor is None or tensor.shape[-(output.ndim - 2):] == output.shape[2:]:
        return tensor
    channel = tensor.ndim == output.ndim
    x = tensor if channel else tensor[:, None]
    x = F.interpolate(x.float(), size=output.shape[2:], mode="nearest")
    return (x if channel else x[:, 0]).to(tensor.dtype)
