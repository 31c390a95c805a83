import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _medseg_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty weights folder: nothing leaks into the user's cache."""
    monkeypatch.setenv("MEDSEG_HOME", str(tmp_path_factory.mktemp("medseg_home")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


os.environ.setdefault("NAPARI_ASYNC", "0")
