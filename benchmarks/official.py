"""The official networks, imported from the user's clone of the authors' repository (nothing is copied here).

    --official-repo /path/to/Swin-UMamba     (a clone of https://github.com/JiarunLiu/Swin-UMamba)

The benchmarks time that code as its users run it: PyTorch's default backend flags, and for nnU-Net models
nnU-Net's predictor's autocast (float16 on CUDA), in the same process and on the same weights as ours.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

SWIN_UMAMBA_FILE = "swin_umamba/nnunetv2/nets/SwinUMamba.py"


def _module_from_file(path: Path, name: str):
    if not path.is_file():
        raise SystemExit(f"{path} not found: --official-repo must be a clone of the authors' repository")
    try:
        import nnunetv2  # noqa: F401  (the real one, where installed)
    except ImportError:
        # The network file imports nnU-Net's plans classes for the type hints of its plans builder, which the
        # benchmarks never call; the network itself needs nothing from nnU-Net.
        for part in ("nnunetv2", "nnunetv2.utilities", "nnunetv2.utilities.plans_handling"):
            sys.modules.setdefault(part, types.ModuleType(part))
        handler = types.ModuleType("nnunetv2.utilities.plans_handling.plans_handler")
        handler.ConfigurationManager = handler.PlansManager = object
        sys.modules.setdefault(handler.__name__, handler)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def swin_umamba(repo: str, state_dict: dict, in_chans: int, out_chans: int):
    """The authors' SwinUMamba (as their plans builder makes it) with the given official-format weights."""
    module = _module_from_file(Path(repo) / SWIN_UMAMBA_FILE, "official_swin_umamba")
    network = module.SwinUMamba(in_chans=in_chans, out_chans=out_chans, feat_size=[48, 96, 192, 384, 768],
                                deep_supervision=False, hidden_size=768)
    network.load_state_dict(state_dict, strict=True)
    return network
