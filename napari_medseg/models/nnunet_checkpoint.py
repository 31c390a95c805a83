"""nnU-Net v2 checkpoints (``checkpoint_final.pth``): reading what inference needs, and writing new ones.

An nnU-Net checkpoint is a dict with ``network_weights`` (a state_dict), ``trainer_name``,
``inference_allowed_mirroring_axes`` and ``init_args`` = {plans, configuration, fold, dataset_json, ...}.
The plans and dataset.json inside it fully describe the input channels, the normalisation, the target
spacing, the patch size and the labels, so the file alone is enough to predict exactly as nnU-Net does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

NORMALIZATION_SCHEMES = (
    "ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization", "RGBTo01Normalization",
)
# nnU-Net's channel-name -> scheme mapping for dataset.json channel names (anything else: z-score)
_CHANNEL_NAME_SCHEMES = {
    "ct": "CTNormalization", "nonorm": "NoNormalization", "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization", "rgb_to_0_1": "RGBTo01Normalization",
}


def is_nnunet_checkpoint(state) -> bool:
    return isinstance(state, dict) and isinstance(state.get("network_weights"), dict) and "init_args" in state


@dataclass
class Labels:
    """nnU-Net's LabelManager, reduced to what prediction needs."""

    classes: dict[int, str]  # label value -> name, background included
    heads: int  # network output channels
    regions: list[tuple[int, ...]] | None  # region-based training: sigmoid per region
    regions_class_order: list[int] | None

    @classmethod
    def from_dataset_json(cls, dataset_json: dict) -> "Labels":
        labels = dataset_json.get("labels")
        if not isinstance(labels, dict) or "background" not in labels:
            raise CheckpointError("dataset.json in the checkpoint has no 'labels' with a 'background' entry")
        values = {name: tuple(int(i) for i in (v if isinstance(v, (list, tuple)) else [v]))
                  for name, v in labels.items() if name != "ignore"}
        if all(len(v) == 1 for v in values.values()):
            classes = {v[0]: name for name, v in values.items()}
            return cls(dict(sorted(classes.items())), len(classes), None, None)
        regions = {name: v for name, v in values.items() if set(v) != {0}}
        order = dataset_json.get("regions_class_order")
        if order is None or len(order) != len(regions):
            raise CheckpointError("Region-based dataset.json needs one 'regions_class_order' entry per region")
        classes = {0: "background", **{int(c): name for c, name in zip(order, regions)}}
        return cls(dict(sorted(classes.items())), len(regions), list(regions.values()), [int(c) for c in order])


@dataclass
class NnUNetCheckpoint:
    network_weights: dict
    trainer_name: str
    plans: dict
    configuration_name: str
    configuration: dict  # the plans' configuration with ``inherits_from`` resolved
    dataset_json: dict
    fold: object
    mirror_axes: tuple[int, ...]
    epoch: int | None

    @property
    def channel_names(self) -> list[str]:
        channels = self.dataset_json.get("channel_names") or self.dataset_json.get("modality")
        if not isinstance(channels, dict) or not channels:
            raise CheckpointError("dataset.json in the checkpoint has no 'channel_names'")
        return [str(channels[k]) for k in sorted(channels, key=int)]

    @property
    def labels(self) -> Labels:
        return Labels.from_dataset_json(self.dataset_json)

    def preprocessing(self) -> dict:
        """Everything nnU-Net's preprocessor and predictor take from the plans, as plain data."""
        cfg = self.configuration
        channels = self.channel_names
        schemes = list(cfg.get("normalization_schemes") or
                       [_CHANNEL_NAME_SCHEMES.get(c.casefold(), "ZScoreNormalization") for c in channels])
        use_mask = list(cfg.get("use_mask_for_norm") or [False] * len(channels))
        properties = self.plans.get("foreground_intensity_properties_per_channel", {})
        if len(schemes) != len(channels):
            raise CheckpointError(f"The plans name {len(schemes)} normalisation schemes for {len(channels)} channels")
        normalization = []
        for c, scheme in enumerate(schemes):
            if scheme not in NORMALIZATION_SCHEMES:
                raise CheckpointError(f"Unsupported nnU-Net normalisation scheme {scheme!r} for channel {c}")
            entry = {"scheme": scheme, "use_mask": bool(use_mask[c])}
            if scheme == "CTNormalization":
                stats = properties.get(str(c), properties.get(c))
                if not stats:
                    raise CheckpointError(f"CTNormalization of channel {c} needs the plans' intensity properties")
                entry.update(mean=float(stats["mean"]), std=float(stats["std"]),
                             lower=float(stats["percentile_00_5"]), upper=float(stats["percentile_99_5"]))
            normalization.append(entry)
        from ..inference.nnunet_resampling import resampling_spec

        labels = self.labels
        ndim = len(cfg["patch_size"])
        return {
            "scheme": "nnunet",
            "configuration": self.configuration_name,
            "channels": channels,
            "normalization": normalization,
            "patch_size": [int(p) for p in cfg["patch_size"]],
            "spacing": [float(s) for s in cfg["spacing"]],
            "transpose_forward": list(self.plans.get("transpose_forward", range(3))),
            "transpose_backward": list(self.plans.get("transpose_backward", range(3))),
            "mirror_axes": [a for a in self.mirror_axes if a < ndim],
            "tile_step_size": 0.5,
            "crop_to_nonzero": True,
            "resampling_data": resampling_spec(cfg, "data"),
            "resampling_probabilities": resampling_spec(cfg, "probabilities"),
            "output": "sigmoid" if labels.regions else "softmax",
            "regions_class_order": labels.regions_class_order,
            "rgb": self.plans.get("image_reader_writer") == "NaturalImage2DIO" and len(channels) == 3,
        }

    def info(self) -> dict:
        return {
            "trainer": self.trainer_name,
            "configuration": self.configuration_name,
            "fold": self.fold,
            "dataset": self.dataset_json.get("name") or self.plans.get("dataset_name"),
            "epoch": self.epoch,
        }


def _resolve_configuration(plans: dict, name: str) -> dict:
    configurations = plans.get("configurations", {})
    if name not in configurations:
        raise CheckpointError(f"The plans have no configuration {name!r} (have: {', '.join(configurations)})")
    config = dict(configurations[name])
    seen = {name}
    while "inherits_from" in config:
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise CheckpointError(f"Configuration {name!r} inherits from unknown or circular {parent!r}")
        seen.add(parent)
        config = {**configurations[parent], **config}
    for field in ("patch_size", "spacing"):
        if field not in config:
            raise CheckpointError(f"Configuration {name!r} in the plans has no {field!r}")
    return config


def parse_nnunet_checkpoint(state, path: Path | None = None) -> NnUNetCheckpoint:
    name = Path(path).name if path else "The checkpoint"
    if not is_nnunet_checkpoint(state):
        raise CheckpointError(f"{name} is not an nnU-Net checkpoint (no 'network_weights' and 'init_args')")
    init_args = state["init_args"]
    try:
        plans, configuration_name, dataset_json = (
            init_args["plans"], init_args["configuration"], init_args["dataset_json"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{name} lacks the plans, configuration or dataset.json in 'init_args'") from None
    axes = state.get("inference_allowed_mirroring_axes")
    epoch = state.get("current_epoch")
    return NnUNetCheckpoint(
        network_weights=state["network_weights"],
        trainer_name=str(state.get("trainer_name", "")),
        plans=plans,
        configuration_name=str(configuration_name),
        configuration=_resolve_configuration(plans, str(configuration_name)),
        dataset_json=dataset_json,
        fold=init_args.get("fold"),
        mirror_axes=tuple(int(a) for a in axes) if axes is not None else (),
        epoch=int(epoch) if epoch is not None else None,
    )


def save_nnunet_checkpoint(path: str | Path, network_weights: dict, *, trainer_name: str, plans: dict,
                           configuration: str, dataset_json: dict, fold="all", epoch: int = 0,
                           mirror_axes=(0, 1), optimizer_state: dict | None = None,
                           grad_scaler_state: dict | None = None, logging: dict | None = None,
                           extra: dict | None = None) -> Path:
    """Write ``network_weights`` as nnU-Net v2's trainer does, readable by nnU-Net and by this package.

    ``extra`` adds top-level entries (e.g. this package's ``"medseg"`` metadata) that nnU-Net ignores.
    """
    import torch

    _resolve_configuration(plans, configuration)  # refuse plans nnU-Net could not use
    Labels.from_dataset_json(dataset_json)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "network_weights": {k: v.detach().cpu() for k, v in network_weights.items()},
        "optimizer_state": optimizer_state or {},
        "grad_scaler_state": grad_scaler_state,
        "logging": logging or {},
        "_best_ema": None,
        "current_epoch": int(epoch),
        "init_args": {
            "plans": plans,
            "configuration": configuration,
            "fold": fold,
            "dataset_json": dataset_json,
            "unpack_dataset": True,
            "device": torch.device("cpu"),
        },
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": tuple(mirror_axes) if mirror_axes is not None else None,
        **(extra or {}),
    }
    torch.save(checkpoint, path)
    return path
