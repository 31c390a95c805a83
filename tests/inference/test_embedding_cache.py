"""The on-disk embedding cache: survives a new predictor, keyed by everything an embedding depends on,
bounded in size, and never trusts a damaged file."""
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from napari_medseg.errors import MedsegError
from napari_medseg.inference.box2d import BoxPredictor, Embedding
from napari_medseg.inference.embedding_cache import EmbeddingStore, default_store
from napari_medseg.models import load_checkpoint
from napari_medseg.models import sam_family as sf


@pytest.fixture(scope="module")
def loaded():
    return load_checkpoint(sf.bundled_lite_medsam_path())


def counting(predictor):
    """Replace the image encoder by a counter that returns a recognisable fake embedding."""
    calls = []

    def embed(rgb):
        calls.append(1)
        return Embedding(torch.full((1, 4, 2, 2), float(len(calls))), (5, 6), tuple(rgb.shape[:2]))

    predictor._embed = embed
    return calls


IMAGE = data.camera()[::4, ::4]


def test_a_new_predictor_reads_the_embedding_from_disk(loaded, tmp_path):
    first = BoxPredictor(loaded, device="cpu", precision="fp32", store=EmbeddingStore(tmp_path))
    first.set_image(IMAGE)
    mask = first.predict(box=(20, 20, 90, 80))
    assert not first.cache_hit and len(list(tmp_path.glob("*.npz"))) == 1

    restarted = BoxPredictor(loaded, device="cpu", precision="fp32", store=EmbeddingStore(tmp_path))
    calls = counting(restarted)
    restarted.set_image(IMAGE.copy())
    assert restarted.cache_hit and not calls and restarted.store.hits == 1
    assert torch.equal(restarted.embedding.features, first.embedding.features)
    assert np.array_equal(restarted.predict(box=(20, 20, 90, 80)), mask)


def test_the_key_follows_weights_precision_preprocessing_and_display(loaded, tmp_path):
    def predictor(model=loaded, precision="fp32"):
        p = BoxPredictor(model, device="cpu", precision=precision, store=EmbeddingStore(tmp_path))
        return p, counting(p)

    base, calls = predictor()
    base.set_image(IMAGE)
    assert len(calls) == 1
    again, calls = predictor()
    again.set_image(IMAGE)
    assert again.cache_hit and not calls
    variants = [
        (predictor(dataclasses.replace(loaded, sha256="0" * 64)), None),  # other weights
        (predictor(precision="bf16"), None),
        (predictor(dataclasses.replace(loaded, preprocessing={**loaded.preprocessing, "normalization": "z"})), None),
        (predictor(), (10, 200)),  # another display window maps to other pixels
    ]
    for (variant, calls), display_range in variants:
        variant.set_image(IMAGE, display_range=display_range)
        assert not variant.cache_hit and len(calls) == 1
    assert len(list(tmp_path.glob("*.npz"))) == 5


def test_models_without_a_weights_hash_are_not_stored(loaded, tmp_path):
    unhashed = BoxPredictor(dataclasses.replace(loaded, sha256=None), device="cpu", store=EmbeddingStore(tmp_path))
    counting(unhashed)
    unhashed.set_image(IMAGE)
    assert unhashed.store is None and not list(tmp_path.iterdir())


def test_the_folder_stays_within_its_bound_least_recently_used_first(tmp_path):
    one = Embedding(torch.zeros(1, 64, 32, 32), (8, 8), (8, 8))  # 256 KiB of features
    store = EmbeddingStore(tmp_path)
    store.put(("probe",), one)
    entry_size = store.size()
    store.clear()
    store = EmbeddingStore(tmp_path, max_bytes=int(3.5 * entry_size))
    for age, name in enumerate("abc"):
        path = store.put((name,), one)
        os.utime(path, (1000 + age, 1000 + age))  # a is the oldest
    assert store.get(("a",)) is not None  # a hit makes "a" the most recently used
    store.put(("d",), one)
    store.put(("e",), one)
    assert store.size() <= store.max_bytes
    assert store.get(("b",)) is None and store.get(("c",)) is None
    assert all(store.get((name,)) is not None for name in "ade")
    assert store.put(("huge",), Embedding(torch.zeros(1, 64, 128, 128), (8, 8), (8, 8))) is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other key"])
def test_a_damaged_entry_is_ignored_and_recomputed(loaded, tmp_path, damage):
    predictor = BoxPredictor(loaded, device="cpu", precision="fp32", store=EmbeddingStore(tmp_path))
    calls = counting(predictor)
    predictor.set_image(IMAGE)
    (path,) = tmp_path.glob("*.npz")
    if damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:  # a valid entry under a name it was not written for
        other = predictor.store.put(("another",), predictor.embedding)
        os.replace(other, path)
    fresh = BoxPredictor(loaded, device="cpu", precision="fp32", store=EmbeddingStore(tmp_path))
    fresh_calls = counting(fresh)
    fresh.set_image(IMAGE)
    assert not fresh.cache_hit and len(fresh_calls) == 1 and len(calls) == 1
    again = BoxPredictor(loaded, device="cpu", precision="fp32", store=EmbeddingStore(tmp_path))
    again.set_image(IMAGE)  # the recomputed entry replaced the damaged one
    assert again.cache_hit and torch.equal(again.embedding.features, fresh.embedding.features)


def test_default_store_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSEG_EMBEDDING_CACHE", str(tmp_path / "emb"))
    monkeypatch.setenv("MEDSEG_EMBEDDING_CACHE_GB", "0.5")
    store = default_store()
    assert store.folder == tmp_path / "emb" and store.max_bytes == 2**29
    monkeypatch.delenv("MEDSEG_EMBEDDING_CACHE")
    monkeypatch.delenv("MEDSEG_EMBEDDING_CACHE_GB")
    home = os.environ["MEDSEG_HOME"]  # set per test by conftest
    assert default_store().folder == Path(home) / "embeddings" and default_store().max_bytes == 2 * 2**30
    monkeypatch.setenv("MEDSEG_EMBEDDING_CACHE_GB", "0")
    assert default_store() is None
    monkeypatch.setenv("MEDSEG_EMBEDDING_CACHE_GB", "lots")
    with pytest.raises(MedsegError, match="number of gigabytes"):
        default_store()
