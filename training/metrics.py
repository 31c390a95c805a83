"""``metrics.json``: what a training run reports while it goes (status, budget, loss, validation Dice,
ETA, best result), rewritten atomically so that a GUI can poll it. Torch-free."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from napari_medseg.atomic import atomic_write_text


class MetricsFile:
    """``metrics.json``: status, budget, history and best result, rewritten atomically (rate-limited)."""

    def __init__(self, path: Path, **fields):
        self.path = path
        self.content = {"status": "starting", "pid": os.getpid(), "history": [], "loss_steps": [], **fields}
        self._written = 0.0

    def update(self, force: bool = False, **fields) -> None:
        self.content.update(fields)
        self.content["updated"] = time.time()
        if not force and time.monotonic() - self._written < 1.0:
            return
        self._written = time.monotonic()
        atomic_write_text(self.path, json.dumps(self.content))


def update_metrics(path: str | Path, **fields) -> None:
    """Add ``fields`` to an existing metrics file (after training: the registered model, final status)."""
    path = Path(path)
    content = read_metrics(path) or {}
    writer = MetricsFile(path)
    writer.content = {**content, **fields}
    writer.update(force=True)


def read_metrics(path: str | Path) -> dict | None:
    """The metrics file's content, or None while it does not exist (or is being replaced)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
