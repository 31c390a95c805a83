"""LVM-Med's ResNet-50 U-Net (segmentation_models_pytorch ``Unet("resnet50")``) for automatic 2-D masks.

Accepts the fine-tuned checkpoints LVM-Med's training scripts save (``torch.save(net.state_dict())``:
2-D RGB with 2 classes, slice-wise 3-D grey with 8 classes, or any in_channels/classes, read from the
keys) and the bare ``lvmmed_resnet.torch`` backbone (torchvision ResNet-50 keys), which gets an
untrained decoder for fine-tuning: ``load_checkpoint(path, family="lvm_med_unet", classes=N, in_channels=C)``.
smp 0.6.0 builds the same keys and forward as the smp 0.3.3 that LVM-Med used (checked by the
conformance case ``lvm_med_resnet50_unet``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .loaded import LoadedModel

FAMILIES = ("lvm_med_unet",)

# bottleneck conv3 tensors tell ResNet-50 from ResNet-18/34; _resnet50 tells it from 101/152
_UNET_KEYS = ("encoder.conv1.weight", "encoder.layer4.2.conv3.weight", "decoder.blocks.0.conv1.0.weight",
              "segmentation_head.0.weight")
_BACKBONE_KEYS = ("conv1.weight", "bn1.running_mean", "layer4.2.conv3.weight")


def _state_dict(state) -> dict | None:
    if not isinstance(state, dict):
        return None
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def sniff(state) -> str | None:
    sd = _state_dict(state)
    if not sd:
        return None
    unet = all(k in sd for k in _UNET_KEYS)
    backbone = all(k in sd for k in _BACKBONE_KEYS) and not any(k.startswith("encoder.") for k in sd)
    if (unet and _resnet50(sd, "encoder.")) or (backbone and _resnet50(sd, "")):
        return "lvm_med_unet"
    return None


def _resnet50(sd: dict, prefix: str) -> bool:
    """ResNet-50 has 3, 4, 6, 3 bottlenecks (101/152 have more in layer3)."""
    return f"{prefix}layer3.5.conv3.weight" in sd and f"{prefix}layer3.6.conv1.weight" not in sd


def preprocessing(image_size: int, in_channels: int) -> dict:
    return {
        "profile": "lvm_med", "image_size": image_size, "in_channels": in_channels,
        "channel_order": "BGR" if in_channels == 3 else "grey",
        "resize": f"nearest (skimage order 0) to {image_size}x{image_size}, aspect ratio not kept",
        "intensity": "per-image min-max to 0..255 (x - min) * 255 / (0.01 + max - min), truncated; no mean/std",
        "output": "logits (B, classes, S, S); argmax over classes", "input_multiple": 32,
    }


def prepare_input(image: np.ndarray, in_channels: int = 3, image_size: int = 256, display_range=None) -> np.ndarray:
    """LVM-Med's network input (C, S, S) float32 from a grey (H, W) or RGB (H, W, 3) image.

    The image is first mapped to 0..255 (``display_range`` or its min-max; uint8 stays as it is), as
    the PNG files LVM-Med trained on. Colour is fed in OpenCV's BGR order; one-channel models get
    ``cv2.imread(path, 0)`` grey (ITU-R 601 luma).
    """
    from skimage.transform import resize

    from ..inference.intensity import to_uint8

    image = np.asarray(image)
    if display_range is not None or image.dtype != np.uint8:
        values = np.nan_to_num(image.astype(np.float32))
        image = to_uint8(values, display_range or (float(values.min()), float(values.max())))
    if image.ndim == 3 and image.shape[-1] >= 3:
        image = image[..., :3]
        if in_channels == 1:
            image = np.rint(image @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
        else:
            image = image[..., ::-1]
    if image.ndim == 2 and in_channels == 3:
        image = np.repeat(image[..., None], 3, axis=2)
    resized = resize(image, (image_size, image_size), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
    low, high = float(resized.min()), float(resized.max())
    scaled = ((resized - low) * (1 / (0.01 + high - low) * 255)).astype(np.uint8).astype(np.float32)
    return scaled.reshape(image_size, image_size, -1).transpose(2, 0, 1)


def _class_names(classes, count: int) -> dict[int, str]:
    if isinstance(classes, dict):
        if len(classes) != count:
            raise CheckpointError(f"{len(classes)} class names given for a network with {count} outputs")
        return {int(k): str(v) for k, v in classes.items()}
    return {0: "background", **{i: f"class {i}" for i in range(1, count)}}


def build(state, family: str = "lvm_med_unet", path: Path | None = None, classes=None, in_channels: int | None = None,
          image_size: int = 256, **options) -> LoadedModel:
    """smp U-Net (ResNet-50) with the checkpoint's weights.

    Fine-tuned U-Net: in_channels and classes come from the keys (``classes`` may name them).
    Bare backbone: ``classes`` (count or names, default 2) and ``in_channels`` (default 3) shape the
    new, untrained decoder; the RGB stem is adapted to other channel counts as smp does.
    """
    import segmentation_models_pytorch as smp
    import torch

    from .families import load_strict

    sd = _state_dict(state)
    if sniff(sd) != "lvm_med_unet":
        raise CheckpointError(f"{path.name if path else 'The checkpoint'} is not an LVM-Med ResNet-50 U-Net or backbone")
    info: dict = {}
    if "encoder.conv1.weight" in sd:
        count = sd["segmentation_head.0.weight"].shape[0]
        channels = sd["encoder.conv1.weight"].shape[1]
        if in_channels not in (None, channels):
            raise CheckpointError(f"The checkpoint takes {channels} input channels, not {in_channels}")
        names = _class_names(classes, count)
        network = smp.Unet("resnet50", encoder_weights=None, in_channels=channels, classes=count)
        load_strict(network, sd, family, path)
    else:
        count = len(classes) if isinstance(classes, dict) else int(classes or 2)
        names, channels = _class_names(classes, count), int(in_channels or 3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the untrained decoder starts the same for everyone
            network = smp.Unet("resnet50", encoder_weights=None, in_channels=3, classes=count)
        backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        load_strict(network.encoder, backbone, family, path)
        network.encoder.set_in_channels(channels, pretrained=True)
        info["untrained_decoder"] = True
        info["note"] = "LVM-Med backbone with a new decoder: fine-tune on your labels before using its masks"
    return LoadedModel(
        network=network.eval(), family=family, task="auto2d", classes=names,
        preprocessing=preprocessing(image_size, channels), path=path, info=info,
    )
