import errno
import os
import stat

import pytest

from napari_medseg import atomic


def test_replacing_keeps_old_content_when_the_writer_fails(tmp_path):
    target = tmp_path / "mask.nii"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(target) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_verify_failure_keeps_old_content(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def verify(path):
        raise OSError("read back 3 of 10 bytes")

    with pytest.raises(OSError, match="read back"):
        with atomic.replacing(target, verify=verify) as temp:
            temp.write_bytes(b"new")
    assert target.read_bytes() == b"old"


def test_short_write_raises_enospc(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    target.write_text("{}")
    real_write = os.write
    monkeypatch.setattr(atomic.os, "write", lambda fd, data: real_write(fd, bytes(data[:2])) if len(data) > 2 else 0)
    with pytest.raises(OSError) as info:
        atomic.atomic_write_text(target, '{"a": 1}')
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_new_files_follow_the_umask_and_replacements_keep_their_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = atomic.atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        kept = tmp_path / "kept.txt"
        kept.write_text("a")
        kept.chmod(0o640)
        atomic.atomic_write_text(kept, "b")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_json_refuses_nan_and_stale_temps_are_removed(tmp_path):
    with pytest.raises(ValueError):
        atomic.atomic_write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert not (tmp_path / "x.json").exists()
    stale = atomic.temp_path(tmp_path / "entry.json")
    stale.write_text("partial")
    assert atomic.remove_stale_temps(tmp_path) == [stale]
    assert not stale.exists()
