"""Swin SMT (Płotka et al., MICCAI 2024): Swin UNETR whose Swin blocks in the last stages replace the
MLP with a Soft Mixture-of-Experts that mixes all tokens of the window. Family ``swin_smt``.

The network is MONAI's ``SwinUNETR`` (same topology and state_dict names as MI2DataLab/SwinSMT) with
two changes that the official code makes: the legacy v0.9 "merging" patch merging (with its duplicated
slices, see `LegacyPatchMerging`) and `DynamicSlotsSoftMoE` as ``mlp`` of every block in the last
``moe_stages`` stages. The configuration comes from the weights: ``use_v2`` from ``swinViT.layers1c``,
experts from ``mlp.experts.<i>``, MoE stages from ``mlp.to_slot_embeds``, channels from the first and
last convolutions, depths and heads from the blocks and their position-bias tables.

Files: a plain state_dict as the official ``torch.save(model.state_dict())`` writes it, optionally wrapped
in ``{'state_dict'|'model'|'network_weights': ...}`` and/or with a ``module.`` (any common) prefix, and the
project's own checkpoints (`save_swin_smt_checkpoint`): ``{'network_weights': ..., 'medseg': {...}}``.

The Soft-MoE makes every output voxel depend on the whole input window, so the model must be run on
exactly its training window (128^3 for official files; ``roi_size`` in the metadata of our own files).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import PatchMergingV2, SwinUNETR, WindowAttention

from ..atomic import replacing
from ..errors import CheckpointError
from .families import load_strict
from .loaded import LoadedModel
from .soft_moe import DynamicSlotsSoftMoE

FAMILIES = ("swin_smt",)
ROI_SIZE = (128, 128, 128)
SPACING = (1.5, 1.5, 1.5)  # mm along the network's (R, A, S) input axes
CLIP = (-1024.0, 1024.0)  # HU window scaled to [0, 1]
CLASS_TABLE = "totalsegmentator_v2"
_ANCHOR = "swinViT.patch_embed.proj.weight"
_WRAPPERS = ("network_weights", "state_dict", "model")
_WINDOW_BIAS_ROWS = 13**3  # relative-position table of the fixed 7x7x7 window


class LegacyPatchMerging(PatchMergingV2):
    """MONAI v0.9 ``PatchMerging`` as Swin SMT uses it: of the eight 2x2x2 neighbours it takes
    (0,0,0) (1,0,0) (0,1,0) (0,0,1) (1,0,1) (0,1,0) (0,0,1) (1,1,1) -- two duplicated, two never used.
    Later MONAI releases fixed the selection; trained weights need the original one."""

    _OFFSETS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        d, h, w = x.shape[1:4]
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in self._OFFSETS], dim=-1)
        return self.reduction(self.norm(x))


class SwinSMT(SwinUNETR):
    """Swin SMT network; ``forward(x) -> logits (B, out_channels, D, H, W)`` like the official class."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 118,
        feature_size: int = 48,
        use_v2: bool = True,
        num_experts: int = 4,
        moe_stages: int = 3,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        dropout_path_rate: float = 0.0,
        use_checkpoint: bool = False,
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            feature_size=feature_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            use_v2=use_v2,
            downsample=LegacyPatchMerging,
            dropout_path_rate=dropout_path_rate,
            use_checkpoint=use_checkpoint,
        )
        self.config = {
            "in_channels": int(in_channels),
            "out_channels": int(out_channels),
            "feature_size": int(feature_size),
            "use_v2": bool(use_v2),
            "num_experts": int(num_experts),
            "moe_stages": int(moe_stages),
            "depths": [int(d) for d in depths],
            "num_heads": [int(h) for h in num_heads],
        }
        stages = self.stages()
        for stage in stages[len(stages) - moe_stages:]:
            for block in stage.blocks:
                block.mlp = DynamicSlotsSoftMoE(block.dim, num_experts=num_experts, expert_mult=block.mlp_ratio)

    def use_fused_attention(self, enabled: bool = True) -> None:
        """Window attention through ``scaled_dot_product_attention`` under no_grad: the same maths, much
        faster on GPU. Off by default: CPU kernels round differently from the official code (~1e-4)."""
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.use_flash_attention = enabled

    def stages(self) -> list:
        vit = self.swinViT
        return [vit.layers1[0], vit.layers2[0], vit.layers3[0], vit.layers4[0]]


def unwrap(state) -> tuple[dict, dict | None]:
    """(state_dict without wrapper or prefix, the project's ``medseg`` metadata or None)."""
    if not isinstance(state, dict):
        raise CheckpointError("A Swin SMT checkpoint must hold a state_dict (a dict of tensors)")
    metadata = state.get("medseg") if isinstance(state.get("medseg"), dict) else None
    for key in _WRAPPERS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    anchor = next((k for k in state if isinstance(k, str) and k.endswith(_ANCHOR)), None)
    if anchor is None:
        raise CheckpointError(f"No Swin SMT weights found (no key ending in {_ANCHOR!r})")
    prefix = anchor[: -len(_ANCHOR)]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, metadata


def sniff(state) -> str | None:
    try:
        state_dict, _ = unwrap(state)
    except CheckpointError:
        return None
    return "swin_smt" if any(k.endswith(".mlp.to_slot_embeds.0.weight") for k in state_dict) else None


def infer_config(state_dict: dict) -> dict:
    """Constructor arguments of `SwinSMT` read off a state_dict's keys and shapes."""
    try:
        patch = state_dict[_ANCHOR]
        if patch.ndim != 5:
            raise CheckpointError("Only 3-D Swin SMT weights are supported (patch embedding is not 3-D)")
        depths, heads, moe = [], [], []
        for stage in range(1, 5):
            prefix = f"swinViT.layers{stage}.0.blocks."
            blocks = {k[len(prefix):].split(".", 1)[0] for k in state_dict if k.startswith(prefix)}
            table = state_dict[f"{prefix}0.attn.relative_position_bias_table"]
            if table.shape[0] != _WINDOW_BIAS_ROWS:
                raise CheckpointError(
                    f"Unexpected attention window in swinViT.layers{stage} (table {tuple(table.shape)})"
                )
            depths.append(len(blocks))
            heads.append(int(table.shape[1]))
            moe.append(f"{prefix}0.mlp.to_slot_embeds.0.weight" in state_dict)
        moe_stages = sum(moe)
        if moe_stages == 0 or moe != [False] * (4 - moe_stages) + [True] * moe_stages:
            raise CheckpointError(f"Soft-MoE must sit in the last stages; found it in stages {moe}")
        first = f"swinViT.layers{5 - moe_stages}.0.blocks.0.mlp.experts."
        experts = {k[len(first):].split(".", 1)[0] for k in state_dict if k.startswith(first)}
        return {
            "in_channels": int(patch.shape[1]),
            "out_channels": int(state_dict["out.conv.conv.weight"].shape[0]),
            "feature_size": int(patch.shape[0]),
            "use_v2": any(k.startswith("swinViT.layers1c.") for k in state_dict),
            "num_experts": len(experts),
            "moe_stages": moe_stages,
            "depths": depths,
            "num_heads": heads,
        }
    except KeyError as exc:
        raise CheckpointError(f"Not a complete Swin SMT state_dict: {exc.args[0]!r} is missing") from None


def generic_classes(out_channels: int) -> dict[int, str]:
    return {0: "background", **{i: f"class_{i}" for i in range(1, out_channels)}}


def default_classes(out_channels: int) -> dict[int, str]:
    """TotalSegmentator v2 names for the official 118 outputs, generic names otherwise."""
    if out_channels == 118:
        from .registry import class_table

        return class_table(CLASS_TABLE)["names"]
    return generic_classes(out_channels)


def preprocessing_from(metadata: dict | None) -> dict:
    metadata = metadata or {}
    roi = tuple(int(r) for r in metadata.get("roi_size", ROI_SIZE))
    spacing = tuple(float(s) for s in metadata.get("spacing", SPACING))
    if len(roi) != 3 or any(r <= 0 or r % 32 for r in roi) or len(spacing) != 3 or min(spacing) <= 0:
        raise CheckpointError(f"Invalid Swin SMT metadata: roi_size {roi} (multiples of 32), spacing {spacing}")
    return {
        "spacing": spacing,
        "roi_size": roi,
        "clip": CLIP,
        "orientation": "RAS",
        "crop_foreground": True,
    }


def build(state, family: str = "swin_smt", path: Path | None = None, **options) -> LoadedModel:
    state_dict, metadata = unwrap(state)
    config = infer_config(state_dict)
    if metadata and metadata.get("config") is not None and dict(metadata["config"]) != config:
        raise CheckpointError(f"Swin SMT metadata config {metadata['config']} disagrees with the weights ({config})")
    try:
        network = SwinSMT(**config)
    except ValueError as exc:
        raise CheckpointError(f"Unsupported Swin SMT configuration {config}: {exc}") from None
    load_strict(network, state_dict, family, path)
    if metadata and metadata.get("classes"):
        classes = {int(k): str(v) for k, v in metadata["classes"].items()}
        if sorted(classes) != list(range(config["out_channels"])):
            raise CheckpointError(
                f"Class names cover labels {sorted(classes)[:5]}..., the network has {config['out_channels']} outputs"
            )
    else:
        classes = default_classes(config["out_channels"])
    info = {
        "config": config,
        "parameters": sum(p.numel() for p in network.parameters()),
        "checkpoint": "napari-medseg" if metadata else "official state_dict",
        "note": "Soft-MoE mixes all tokens of a window: predictions use exactly roi_size windows.",
    }
    if metadata and metadata.get("extra"):
        info["extra"] = metadata["extra"]
    return LoadedModel(
        network=network.eval(),
        family=family,
        task="auto3d",
        classes=classes,
        preprocessing=preprocessing_from(metadata),
        path=path,
        info=info,
    )


def save_swin_smt_checkpoint(
    network: SwinSMT,
    path: str | Path,
    classes: dict[int, str],
    spacing: Sequence[float] = SPACING,
    extra: dict | None = None,
    *,
    roi_size: Sequence[int] = ROI_SIZE,
) -> Path:
    """Write ``{'network_weights', 'medseg'}`` so that `build` restores network, classes, spacing and window.

    ``spacing`` is in mm along the network's input axes (R, A, S); ``extra`` holds plain Python values
    (numbers, strings, lists, dicts) such as provenance or metrics.
    """
    network = getattr(network, "module", network)  # DistributedDataParallel
    metadata = {
        "family": "swin_smt",
        "config": dict(network.config),
        "classes": {int(k): str(v) for k, v in classes.items()},
        "spacing": [float(s) for s in spacing],
        "roi_size": [int(r) for r in roi_size],
        "extra": dict(extra or {}),
    }
    preprocessing_from(metadata)  # validate before writing
    path = Path(path)
    weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    with replacing(path) as temp:
        torch.save({"network_weights": weights, "medseg": metadata}, temp)
    return path
