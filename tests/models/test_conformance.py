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
    assert _checker().check_case(case_dir)
