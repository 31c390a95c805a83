"""VM-UNet (JCruan519/VM-UNet): a VMamba v0 U-Net with additive skips, loaded from ``best.pth``.

The checkpoint is the plain ``state_dict`` of ``VMUNet`` (every key under ``vmunet.``). Input channels,
class count and encoder/decoder depths are read from the keys. As the official forward, a 1-channel input
is repeated to 3 channels and a 1-class network returns ``sigmoid(logits)`` (a probability).

Pre-processing follows the two official configurations: 1 class = ISIC skin lesions (RGB, per-image
min-max to [0, 255], bilinear resize to 256x256, threshold 0.5); more classes = Synapse CT (HU clipped to
[-125, 275] and scaled to [0, 1], cubic zoom to 224x224, arg-max, nearest zoom back).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError
from .families import load_strict
from .loaded import LoadedModel
from .vmamba import PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSLayer, stage_depths

FAMILIES = ("vm_unet",)
PREFIX = "vmunet."
SYNAPSE_CLASSES = ("background", "aorta", "gallbladder", "left kidney", "right kidney", "liver", "pancreas",
                   "spleen", "stomach")


class VSSM(nn.Module):
    """VM-UNet's encoder-decoder: 4x4 patch embedding, VSS stages with PatchMerging2D inside
    ``layers.{i}.downsample``, PatchExpand2D-led decoder stages with additive skips, 4x final expansion."""

    def __init__(self, in_chans: int, num_classes: int, depths, depths_decoder, dims=(96, 192, 384, 768),
                 patch_size: int = 4, drop_path_rate: float = 0.2, d_state: int = 16):
        super().__init__()
        stages = len(depths)
        dims_decoder = dims[::-1]
        self.patch_embed = PatchEmbed2D(patch_size, in_chans, dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], depths[i], rates[sum(depths[:i]):sum(depths[:i + 1])], d_state,
                     downsample=PatchMerging2D(dims[i]) if i < stages - 1 else None)
            for i in range(stages)
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths_decoder)).tolist()[::-1]
        self.layers_up = nn.ModuleList(
            VSSLayer(dims_decoder[i], depths_decoder[i], rates[sum(depths_decoder[:i]):sum(depths_decoder[:i + 1])],
                     d_state, upsample=PatchExpand2D(2 * dims_decoder[i], dims_decoder[i], 2) if i else None)
            for i in range(stages)
        )
        self.final_up = PatchExpand2D(dims_decoder[-1], dims_decoder[-1] // 4, scale=4)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // 4, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        for i, layer in enumerate(self.layers_up):
            x = layer(x if i == 0 else x + skips[-i])
        return self.final_conv(self.final_up(x).permute(0, 3, 1, 2))


class VMUNet(nn.Module):
    def __init__(self, input_channels: int = 3, num_classes: int = 1, depths=(2, 2, 2, 2),
                 depths_decoder=(2, 2, 2, 1), drop_path_rate: float = 0.2, dims=(96, 192, 384, 768),
                 patch_size: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.vmunet = VSSM(input_channels, num_classes, list(depths), list(depths_decoder), dims, patch_size,
                           drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        logits = self.vmunet(x)
        return torch.sigmoid(logits) if self.num_classes == 1 else logits


def _weights(state) -> dict | None:
    """The VMUNet state_dict in a best.pth (plain) or latest.pth (``model_state_dict``) file."""
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    keys = (f"{PREFIX}patch_embed.proj.weight", f"{PREFIX}final_conv.weight")
    if isinstance(state, dict) and all(key in state for key in keys):
        return state
    return None


def sniff(state) -> str | None:
    return "vm_unet" if _weights(state) is not None else None


def preprocessing_for(num_classes: int) -> dict:
    if num_classes == 1:
        return {"scheme": "vm_unet_isic", "input_size": [256, 256], "input_channels": 3, "rgb": True,
                "normalization": "minmax_0_255", "resize_order": 1, "output": "probability", "threshold": 0.5}
    return {"scheme": "vm_unet_synapse", "input_size": [224, 224], "input_channels": 1, "rgb": False,
            "normalization": "ct_window", "window": [-125.0, 275.0], "resize_order": 3, "output": "softmax"}


def build(state, family: str = "vm_unet", path=None, class_names=None, **options) -> LoadedModel:
    weights = _weights(state)
    name = getattr(path, "name", "The checkpoint")
    if weights is None:
        raise CheckpointError(f"{name} is not a VM-UNet state_dict (no 'vmunet.' keys)")
    weights = {key[len(PREFIX):]: value for key, value in weights.items()}
    embed = weights["patch_embed.proj.weight"]
    embed_dim, in_chans, patch = embed.shape[0], embed.shape[1], embed.shape[2]
    depths = stage_depths(weights, "layers.", 4)
    depths_decoder = stage_depths(weights, "layers_up.", 4)
    num_classes = weights["final_conv.weight"].shape[0]
    network = VMUNet(in_chans, num_classes, depths, depths_decoder,
                     dims=tuple(embed_dim * 2 ** i for i in range(4)), patch_size=patch)
    load_strict(network, {PREFIX + k: v for k, v in weights.items()}, family, path)
    if class_names is not None:
        names = list(class_names)
    elif num_classes == 1:
        names = ["background", "lesion"]
    elif num_classes == len(SYNAPSE_CLASSES):
        names = list(SYNAPSE_CLASSES)
    else:
        names = ["background"] + [f"class {i}" for i in range(1, num_classes)]
    info = {"depths": depths, "depths_decoder": depths_decoder, "input_channels": in_chans}
    if class_names is None and num_classes == len(SYNAPSE_CLASSES):
        info["note"] = "class names assumed from VM-UNet's Synapse configuration"
    return LoadedModel(network=network, family=family, task="auto2d", classes=dict(enumerate(names)),
                       preprocessing=preprocessing_for(num_classes), path=path, info=info)
