"""Recovery copies of unsaved labels, so that a crash or a killed viewer loses at most a few seconds of work.

Each copy is one compressed ``.npz`` (the labels array and a JSON header: layer name, placement, the
layer's metadata) written through `napari_medseg.atomic`, in a folder named after the content hash of
the image the labels belong to: a later session that opens the same image finds them, whatever the
file was called. Copies are read with ``allow_pickle=False``; an unreadable one is logged and skipped.

Folder: ``MEDSEG_RECOVERY`` if set, else ``$MEDSEG_HOME/recovery`` (the user's cache folder).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import fsync_dir, remove_stale_temps, replacing

log = logging.getLogger(__name__)
SUFFIX = ".npz"
STALE_TEMP_S = 600  # a temporary file this old was left by a killed writer (a copy takes seconds)


def recovery_dir() -> Path:
    folder = os.environ.get("MEDSEG_RECOVERY")
    if folder:
        return Path(folder).expanduser()
    from .models.weights import medseg_home

    return medseg_home() / "recovery"


def image_key(array) -> str:
    """The content hash of an image (its values, shape and type): the same image gives the same key."""
    data = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha256(data.view(np.uint8).reshape(-1))
    digest.update(repr((data.shape, data.dtype.str)).encode())
    return digest.hexdigest()


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy arrays and scalars in prompt records
        return value.tolist()
    return str(value)


@dataclass(frozen=True)
class Snapshot:
    """One recovery copy on disk."""
    path: Path
    image_key: str
    name: str  # the labels layer's name
    saved: float  # seconds since the epoch
    shape: tuple[int, ...]

    def load(self) -> tuple[np.ndarray, dict]:
        """(labels array, header); the header has ``name``, ``saved``, ``scale``, ``translate`` and ``metadata``."""
        with np.load(self.path, allow_pickle=False) as stored:
            return np.array(stored["labels"]), json.loads(str(stored["header"]))


class RecoveryStore:
    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder).expanduser() if folder is not None else recovery_dir()

    def path(self, key: str, name: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "labels"
        tag = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:8]  # names differing in symbols
        return self.folder / key / f"{slug}-{tag}{SUFFIX}"

    def save(self, key: str, name: str, labels, *, scale=None, translate=None, metadata=None) -> Path:
        """Write (or replace) the copy of labels layer ``name`` of the image ``key``."""
        labels = np.asarray(labels)
        header = json.dumps({"name": name, "saved": time.time(), "shape": list(labels.shape),
                             "scale": None if scale is None else [float(v) for v in scale],
                             "translate": None if translate is None else [float(v) for v in translate],
                             "metadata": metadata or {}}, default=_json_default)
        target = self.path(key, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with replacing(target) as temp:
            with open(temp, "wb") as f:
                np.savez_compressed(f, labels=labels, header=np.asarray(header))
        return target

    def snapshots(self, key: str | None = None) -> list[Snapshot]:
        """Readable copies for image ``key`` (all images when None), newest first."""
        folders = [self.folder / key] if key else [p for p in self.folder.glob("*") if p.is_dir()]
        found = []
        for folder in folders:
            remove_stale_temps(folder, min_age_s=STALE_TEMP_S)  # another viewer may be writing a copy now
            for path in folder.glob(f"*{SUFFIX}"):
                try:
                    with np.load(path, allow_pickle=False) as stored:
                        header = json.loads(str(stored["header"]))
                    found.append(Snapshot(path, folder.name, str(header["name"]), float(header["saved"]),
                                          tuple(int(v) for v in header["shape"])))
                except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
                    log.warning("Skipping the unreadable recovery file %s: %s", path, exc)
        return sorted(found, key=lambda s: s.saved, reverse=True)

    def discard(self, key: str, name: str | None = None) -> None:
        """Remove the copy of ``name`` (or every copy) for image ``key``; the folder goes when empty."""
        folder = self.folder / key
        paths = [self.path(key, name)] if name is not None else list(folder.glob(f"*{SUFFIX}"))
        for path in paths:
            path.unlink(missing_ok=True)
        try:
            folder.rmdir()
            fsync_dir(self.folder)
        except OSError:  # not empty, or already gone
            pass
