"""Atomic, checked and durable file writes: the one way this package replaces a file.

Content goes to a uniquely named temporary file in the target's folder; the bytes are counted (a short
write is an error, not a smaller file), an optional ``verify`` reads the result back, the file is
fsynced, renamed over the target, and the folder is fsynced so that the rename survives a power cut.
On any failure the target keeps its old content and the temporary file is removed. New files get the
permissions the user's umask allows (``mkstemp`` alone would make them 0600).
"""
from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

TEMP_MARK = ".medseg-tmp-"


def temp_path(target: Path) -> Path:
    """A unique temporary name beside ``target`` that keeps its suffixes (writers choose formats by them)."""
    return target.with_name(f"{TEMP_MARK}{uuid.uuid4().hex[:12]}-{target.name}")


def default_mode() -> int:
    """0o666 less the process's umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the file itself is already durable
    finally:
        os.close(fd)


def write_fully(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd``; a write that makes no progress raises ENOSPC instead of returning."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(28, "No space left on device (short write)")
        view = view[written:]


@contextmanager
def replacing(target: str | Path, *, verify: Callable[[Path], None] | None = None,
              mode: int | None = None) -> Iterator[Path]:
    """``with replacing(path) as temp: writer(temp)``: ``temp`` replaces ``path`` only if the block and
    ``verify(temp)`` succeed. ``mode`` defaults to the old file's mode, else the umask's."""
    target = Path(target)
    temp = temp_path(target)
    try:
        yield temp
        if not temp.is_file():
            raise OSError(f"the writer produced no file for {target.name}")
        if verify is not None:
            verify(temp)
        fsync_file(temp)
        if mode is None:
            mode = target.stat().st_mode & 0o7777 if target.is_file() else default_mode()
        os.chmod(temp, mode)
        os.replace(temp, target)
        fsync_dir(target.parent)
    finally:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist: a temporary name from ``replacing``) holding all of ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_fully(fd, data)
    finally:
        os.close(fd)


def atomic_write_bytes(target: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    target = Path(target)
    with replacing(target, mode=mode) as temp:
        write_new(temp, data)
    return target


def atomic_write_text(target: str | Path, text: str, *, mode: int | None = None) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"), mode=mode)


def atomic_write_json(target: str | Path, content, *, mode: int | None = None) -> Path:
    return atomic_write_text(target, json.dumps(content, indent=1, allow_nan=False), mode=mode)


def remove_stale_temps(folder: str | Path, *, recursive: bool = False, min_age_s: float = 0) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder``; returns what was removed. Where a
    live writer may be at work (no lock held), ``min_age_s`` spares temporaries modified more recently."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f"**/{TEMP_MARK}*" if recursive else f"{TEMP_MARK}*"
    removed = []
    for path in folder.glob(pattern):
        try:
            if path.is_file() and (not min_age_s or time.time() - path.stat().st_mtime >= min_age_s):
                path.unlink()
                removed.append(path)
        except OSError:
            pass
    return removed
