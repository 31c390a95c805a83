"""register_model: the registered weights and card are written atomically with the user's umask permissions."""
import os
import stat

import pytest

from napari_medseg.errors import MedsegError
from napari_medseg.models.registry import get_card
from napari_medseg.models.weights import medseg_home
from napari_medseg.training import register


def _register(weights, model_id="lite-medsam-ft-test"):
    base = get_card("lite-medsam")
    return register.register_model(weights, model_id=model_id, base_card=base, family=base.family, task=base.task,
                                   classes={1: "object"}, provenance={"data": "x"})


def test_registered_files_follow_the_umask(tmp_path):
    weights = tmp_path / "best.pth"
    weights.write_bytes(b"w" * 1000)
    old = os.umask(0o022)
    try:
        card = _register(weights)
    finally:
        os.umask(old)
    folder = medseg_home() / "models" / card.id
    for name in ("best.pth", "card.yaml"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name
    assert (folder / "best.pth").read_bytes() == weights.read_bytes()


def test_a_short_copy_never_becomes_the_registered_model(tmp_path, monkeypatch):
    weights = tmp_path / "best.pth"
    weights.write_bytes(b"w" * 1000)
    _register(weights, "lite-medsam-ft-short")
    folder = medseg_home() / "models" / "lite-medsam-ft-short"
    before = (folder / "best.pth").read_bytes()
    weights.write_bytes(b"v" * 2000)

    def short_copy(source, target):  # what a full disk can leave without an error
        with open(target, "wb") as handle:
            handle.write(open(source, "rb").read()[:100])

    monkeypatch.setattr(register.shutil, "copyfile", short_copy)
    with pytest.raises(MedsegError, match="incomplete"):
        _register(weights, "lite-medsam-ft-short")
    assert (folder / "best.pth").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["best.pth", "card.yaml"]
