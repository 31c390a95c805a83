"""Recovery copies of labels: found again by image content, atomic, damaged copies skipped."""
import os
import time

import numpy as np

from napari_medseg import atomic
from napari_medseg.recovery import STALE_TEMP_S, RecoveryStore, image_key, recovery_dir


def test_a_copy_comes_back_for_the_same_image_content(tmp_path):
    image = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    labels = np.zeros(image.shape, np.uint16)
    labels[1, 1:3, 2:4] = 7
    store = RecoveryStore(tmp_path)
    meta = {"medseg": {"prompts": [{"box": np.array([1.5, 2.0, 3.0, 4.0]), "label": np.int64(7)}],
                       "label_names": {7: "liver"}}}
    store.save(image_key(image), "CT labels", labels, scale=(2.5, 1, 1), translate=(0, 0, 0), metadata=meta)
    (snapshot,) = RecoveryStore(tmp_path).snapshots(image_key(image.copy()))
    assert snapshot.name == "CT labels" and snapshot.shape == (3, 4, 5)
    restored, header = snapshot.load()
    assert np.array_equal(restored, labels) and restored.dtype == np.uint16
    assert header["scale"] == [2.5, 1, 1]
    assert header["metadata"]["medseg"]["prompts"][0]["box"] == [1.5, 2.0, 3.0, 4.0]
    assert header["metadata"]["medseg"]["label_names"] == {"7": "liver"}
    assert store.snapshots(image_key(image + 1)) == []  # another image has no copies
    assert image_key(image) != image_key(image.astype(np.int32))


def test_names_differing_only_in_symbols_do_not_collide_and_discard_cleans(tmp_path):
    store = RecoveryStore(tmp_path)
    store.save("k", "a/b", np.ones((2, 2), np.uint8))
    store.save("k", "a?b", np.zeros((2, 2), np.uint8))
    store.save("k", "a/b", np.full((2, 2), 3, np.uint8))  # replaces its own copy
    snapshots = store.snapshots("k")
    assert sorted(s.name for s in snapshots) == ["a/b", "a?b"]
    assert next(s for s in snapshots if s.name == "a/b").load()[0].max() == 3
    store.discard("k", "a/b")
    assert [s.name for s in store.snapshots("k")] == ["a?b"]
    store.discard("k")
    assert not (tmp_path / "k").exists() and store.snapshots() == []


def test_damaged_copies_and_killed_writers_are_skipped(tmp_path):
    store = RecoveryStore(tmp_path)
    good = store.save("k", "good", np.ones((2, 2), np.uint8))
    store.path("k", "bad").write_bytes(b"truncated")
    stale = atomic.temp_path(store.path("k", "half"))
    stale.write_bytes(b"x")
    writing = atomic.temp_path(store.path("k", "live"))  # another viewer's copy being written now
    writing.write_bytes(b"y")
    old = time.time() - STALE_TEMP_S - 1
    os.utime(stale, (old, old))
    assert [s.name for s in store.snapshots()] == ["good"]
    assert not stale.exists() and good.exists() and writing.exists()


def test_folder_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSEG_RECOVERY", str(tmp_path / "r"))
    assert recovery_dir() == tmp_path / "r" and RecoveryStore().folder == tmp_path / "r"
    monkeypatch.delenv("MEDSEG_RECOVERY")
    assert str(recovery_dir()) == os.path.join(os.environ["MEDSEG_HOME"], "recovery")
