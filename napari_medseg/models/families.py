"""Architecture families and the one loading path: ``load_checkpoint``.

Each family module in this package provides:
- ``FAMILIES``: the family names it builds;
- ``sniff(state) -> str | None``: the family of a loaded checkpoint object, if it is one of its own;
- ``build(state, family, path, **options) -> LoadedModel``: the network with the weights loaded strictly.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import CheckpointError
from .checkpoint import read_checkpoint, sha256_of
from .loaded import LoadedModel

# family -> module (checked in this order when the family is guessed)
FAMILY_MODULES: dict[str, str] = {
    "llm_swin_umamba": "llm_swin_umamba",
    "swin_umamba": "swin_umamba",
    "swin_umamba_d": "swin_umamba",
    "vm_unet": "vm_unet",
    "swin_smt": "swin_smt",
    "lvm_med_unet": "lvm_med_unet",
    "lite_medsam": "sam_family",
    "sam": "sam_family",
    "medsam": "sam_family",
    "lvm_med_vit": "sam_family",
}


def family_module(family: str):
    if family not in FAMILY_MODULES:
        raise CheckpointError(f"Unknown model family {family!r}; known: {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(f"{__package__}.{FAMILY_MODULES[family]}")


def guess_family(state) -> str:
    """The family whose checkpoint layout matches ``state``."""
    tried = set()
    for module_name in FAMILY_MODULES.values():
        if module_name in tried:
            continue
        tried.add(module_name)
        try:
            module = importlib.import_module(f"{__package__}.{module_name}")
        except ImportError:
            continue
        family = module.sniff(state)
        if family:
            return family
    raise CheckpointError(
        "The file's contents match none of the supported model families "
        f"({', '.join(FAMILY_MODULES)}); pass family= to say which it is."
    )


def load_checkpoint(path: str | Path, family: str | None = None, **options) -> LoadedModel:
    """Load an official (or napari-medseg-trained) checkpoint file of a supported family."""
    path = Path(path)
    state = read_checkpoint(path)
    family = family or guess_family(state)
    module = family_module(family)
    if hasattr(module, "sniff"):
        found = module.sniff(state)
        if found is None:
            other = _safe_guess(state)
            hint = f" It looks like a {other!r} checkpoint." if other else ""
            raise CheckpointError(f"{path.name} is not a {family!r} checkpoint.{hint}")
    loaded = module.build(state, family=family, path=path, **options)
    loaded.path = path
    if loaded.sha256 is None and options.get("hash", True):
        loaded.sha256 = sha256_of(path)
    loaded.network.eval()
    return loaded


def _safe_guess(state) -> str | None:
    try:
        return guess_family(state)
    except CheckpointError:
        return None


def load_strict(network, state_dict: dict, family: str, path: Path | None = None) -> None:
    """``load_state_dict(strict=True)`` with a readable error for the wrong file."""
    result_missing, result_unexpected = [], []
    own = network.state_dict()
    result_missing = [k for k in own if k not in state_dict]
    result_unexpected = [k for k in state_dict if k not in own]
    shape_mismatch = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if result_missing or result_unexpected or shape_mismatch:
        name = path.name if path else "the checkpoint"
        parts = []
        if result_missing:
            parts.append(f"{len(result_missing)} missing keys (e.g. {', '.join(result_missing[:3])})")
        if result_unexpected:
            parts.append(f"{len(result_unexpected)} unexpected keys (e.g. {', '.join(result_unexpected[:3])})")
        if shape_mismatch:
            parts.append(f"{len(shape_mismatch)} shape mismatches (e.g. {shape_mismatch[0]})")
        raise CheckpointError(f"{name} does not fit the {family} architecture: " + "; ".join(parts))
    network.load_state_dict(state_dict, strict=True)
