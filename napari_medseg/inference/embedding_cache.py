"""Image embeddings kept on disk, so that a reopened volume does not run the image encoder again.

An entry is named after a signature of everything the embedding depends on (micro-sam's idea): the
slice's content hash and display range, the model family and its weights' sha256, the family's
preprocessing, the precision and this file format's version. Entries are ``.npz`` files written through
`napari_medseg.atomic` and read with ``allow_pickle=False``; one that cannot be read or does not carry
its own signature is deleted and the embedding recomputed. The folder is bounded in size: the least
recently used entries (by modification time, refreshed on every hit) go first.

Settings: ``MEDSEG_EMBEDDING_CACHE`` (folder; default ``$MEDSEG_HOME/embeddings``) and
``MEDSEG_EMBEDDING_CACHE_GB`` (size bound, default 2; 0 turns the disk cache off).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import remove_stale_temps, replacing

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the stored layout or the meaning of an embedding changes
DEFAULT_GB = 2.0
SUFFIX = ".npz"


def signature(parts) -> str:
    """A stable hex name for a cache key: a tuple of strings, numbers, None, tuples and dicts."""
    text = json.dumps([FORMAT, parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingStore:
    """A folder of embeddings bounded to ``max_bytes``; ``get``/``put`` by a key tuple."""

    def __init__(self, folder: str | Path, max_bytes: int = int(DEFAULT_GB * 2**30)):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.folder, self.max_bytes = Path(folder).expanduser(), int(max_bytes)
        self.hits = self.misses = 0
        self._cleaned = False

    def path(self, key) -> Path:
        return self.folder / f"{signature(key)}{SUFFIX}"

    def get(self, key, device=None):
        """The stored `Embedding` for ``key`` (features on ``device``) or None."""
        from .box2d import Embedding

        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["signature"]) != path.stem:
                    raise ValueError("the entry was written for another key")
                features = np.array(stored["features"], dtype=np.float32)
                input_hw, image_hw = (tuple(int(v) for v in stored[name]) for name in ("input_hw", "image_hw"))
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.info("Ignoring the unreadable cached embedding %s (%s); it will be recomputed", path.name, exc)
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        try:
            os.utime(path)  # least recently used = oldest modification time
        except OSError:
            pass
        import torch

        self.hits += 1
        return Embedding(torch.from_numpy(features).to(device or "cpu"), input_hw, image_hw)

    def put(self, key, embedding) -> Path | None:
        """Store ``embedding``; a full disk or a read-only folder only costs the cache (logged)."""
        path = self.path(key)
        features = embedding.features.detach().float().cpu().numpy()
        if features.nbytes > self.max_bytes:
            return None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self._cleaned:  # temp files of a writer that was killed
                remove_stale_temps(self.folder)
                self._cleaned = True
            with replacing(path) as temp:
                with open(temp, "wb") as f:
                    np.savez(f, features=features, input_hw=np.asarray(embedding.input_hw, np.int64),
                             image_hw=np.asarray(embedding.image_hw, np.int64), signature=np.asarray(path.stem))
            self.evict()
        except OSError as exc:
            log.warning("Could not store an embedding in %s: %s", self.folder, exc)
            return None
        return path

    def entries(self) -> list[tuple[float, int, Path]]:
        """(modification time, size, path) of every entry, oldest first."""
        found = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return sorted(found)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> int:
        """Delete the least recently used entries until the folder fits ``max_bytes``; returns the count."""
        entries = self.entries()
        total, removed = sum(size for _, size, _ in entries), 0
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed

    def clear(self) -> None:
        for _, _, path in self.entries():
            path.unlink(missing_ok=True)


def default_store() -> EmbeddingStore | None:
    """The user's embedding store from the environment (None when ``MEDSEG_EMBEDDING_CACHE_GB`` is 0)."""
    from ..errors import MedsegError

    text = os.environ.get("MEDSEG_EMBEDDING_CACHE_GB", str(DEFAULT_GB))
    try:
        gigabytes = float(text)
    except ValueError:
        raise MedsegError(f"MEDSEG_EMBEDDING_CACHE_GB must be a number of gigabytes, not {text!r}") from None
    if not gigabytes > 0:
        return None
    folder = os.environ.get("MEDSEG_EMBEDDING_CACHE")
    if not folder:
        from ..models.weights import medseg_home

        folder = medseg_home() / "embeddings"
    return EmbeddingStore(folder, int(gigabytes * 2**30))
