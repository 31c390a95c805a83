"""The shared conformance cases: official-format checkpoints must reproduce the reference outputs."""
from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from napari_medseg.models.families import FAMILY_MODULES  # noqa: E402

CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance"
CASES = sorted(p.parent for p in CONFORMANCE.glob("*/case.json"))


def _checker():
    spec = importlib.util.spec_from_file_location("conformance_check", CONFORMANCE / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not CASES, reason="needs ../shared/conformance")
@pytest.mark.parametrize("case_dir", CASES, ids=lambda p: p.name)
def test_conformance_case(case_dir):
    family = json.loads((case_dir / "case.json").read_text())["family"]
    try:
        importlib.import_module(f"napari_medseg.models.{FAMILY_MODULES[family]}")
    except ImportError as exc:
        pytest.skip(f"family module for {family!r} is not available yet ({exc})")
    # PyTorch's own CPU convolutions: on AVX-512 CPUs oneDNN's fp32 kernels round about 3x more (1.8e-6 vs
    # 4e-7 per 3-D convolution, measured), which the Swin SMT case amplifies to 1.2e-4 relative at the logits
    # (5e-5 with native kernels; the official fp32 reference itself is 6.7e-5 from float64) against its 1e-4.
    import torch

    with torch.backends.mkldnn.flags(enabled=False):
        assert _checker().check_case(case_dir)
