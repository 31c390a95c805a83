import os
import stat
import threading

import pytest

from napari_medseg.errors import MedsegError
from napari_medseg.server.auth import client_token, ensure_token, token_matches
from napari_medseg.server.jobs import DeviceQueue, OutOfMemory


def test_sessions_take_turns_and_out_of_memory_fails_one_job_only():
    import torch

    queue = DeviceQueue("cpu")
    gate, order = threading.Event(), []
    try:
        first = queue.submit("a", lambda device: gate.wait(5))
        while not queue.running:
            threading.Event().wait(0.01)
        jobs = [queue.submit(owner, lambda device, name=name: order.append(name))
                for owner, name in (("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1"))]

        def oom(device):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        failing = queue.submit("b", oom)
        after = queue.submit("c", lambda device: "still serving")
        assert queue.queued == 7
        gate.set()
        first.result(5)
        with pytest.raises(OutOfMemory, match="Out of memory on cpu for this request"):
            failing.result(5)
        assert after.result(5) == "still serving"
        for job in jobs:
            job.result(5)
        # one job per session in turn: a, b, c, then a's backlog (b's next job was the failing one)
        assert order == ["a1", "b1", "c1", "a2", "a3"]
    finally:
        gate.set()
        queue.close()


def test_token_is_made_once_with_mode_0600(tmp_path, monkeypatch):
    token, path = ensure_token(tmp_path / "server" / "token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 32
    assert ensure_token(path) == (token, path)  # kept across restarts
    os.chmod(path, 0o644)
    with pytest.raises(MedsegError, match="readable by others"):
        ensure_token(path)
    monkeypatch.delenv("MEDSEG_SERVER_TOKEN", raising=False)
    with pytest.raises(MedsegError, match="MEDSEG_SERVER_TOKEN or pass --token-file"):
        client_token()
    monkeypatch.setenv("MEDSEG_SERVER_TOKEN", "abc")
    assert client_token() == "abc"
    assert token_matches("abc", "abc") and not token_matches("abd", "abc") and not token_matches("", "abc")


def test_default_token_lives_in_medseg_home():
    token, path = ensure_token()
    assert path.parent.parent == __import__("pathlib").Path(os.environ["MEDSEG_HOME"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and token
