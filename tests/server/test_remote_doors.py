"""The remote doors as users run them: `medseg serve` in its own process (killed and restarted mid-session),
`medseg segment --server`, and a client that cannot import torch."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import napari_medseg as ms
from napari_medseg.cli import main
from napari_medseg.server.client import Client, ServerUnavailable

from .conftest import TOKEN, volume

BOX = (14, 18, 52, 46)
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(port: int, token_file: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "napari_medseg.cli", "serve", "--port", str(port),
                                "--token-file", str(token_file), "--devices", "cpu", "--preload", "lite-medsam"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    assert f"127.0.0.1:{port}" in line and str(token_file) in line, line + process.stdout.read()
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def test_killed_and_restarted_server_keeps_the_clients_labels(tmp_path):
    port, token_file = free_port(), tmp_path / "token"
    server = start_serve(port, token_file)
    try:
        token = token_file.read_text().strip()
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        client = Client(f"http://127.0.0.1:{port}", token=token, reconnect_timeout=60)
        session = client.open(volume())
        session.box(BOX, index=2, label=1)
        first = session.labels.copy()
        assert first.any()
        os.kill(server.pid, signal.SIGKILL)  # mid-session, without warning
        server.wait(10)
        quick = Client(f"http://127.0.0.1:{port}", token=token, reconnect_timeout=0.5)
        start = time.monotonic()
        with pytest.raises(ServerUnavailable, match="Cannot reach"):
            quick.connect()
        assert time.monotonic() - start < 10  # a clear error, no hang
        server = start_serve(port, token_file)  # same token file: same token
        session.box((16, 20, 50, 44), index=1, label=2)
        assert session.reopened == 1
        assert np.array_equal(session.labels[2], first[2]) and (session.labels[1] == 2).any()
        assert np.array_equal(session.server_labels(), session.labels)
        session.close()
    finally:
        stop(server)


def test_segment_cli_through_a_server(live_server, tmp_path, monkeypatch, capsys):
    url, _ = live_server
    image = tmp_path / "ct.nii.gz"
    ms.write_labels(volume(), _image(), image)
    monkeypatch.delenv("MEDSEG_SERVER_TOKEN", raising=False)
    argv = ["segment", str(image), "-o", str(tmp_path / "remote.nii.gz"), "--box", "14,18,52,46,2", "--server", url]
    assert main(argv) == 2
    assert "No server token" in capsys.readouterr().err
    monkeypatch.setenv("MEDSEG_SERVER_TOKEN", "wrong")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused the token (401)" in err
    monkeypatch.setenv("MEDSEG_SERVER_TOKEN", TOKEN)
    assert main(argv) == 0
    assert main(["segment", str(image), "-o", str(tmp_path / "local.nii.gz"), "--box", "14,18,52,46,2"]) == 0
    remote = ms.read_image(tmp_path / "remote.nii.gz").array
    assert remote.any() and np.array_equal(remote, ms.read_image(tmp_path / "local.nii.gz").array)
    assert main([*argv, "--weights", "x.pth"]) == 2
    assert "cannot be used with --server" in capsys.readouterr().err


def _image():
    from napari_medseg.segmentation import as_image

    return as_image(volume())


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this client")
sys.meta_path.insert(0, Block())
import numpy as np
import napari_medseg as ms
from napari_medseg.server.client import Client
array = np.frombuffer(bytes.fromhex(sys.argv[3]), dtype=np.int16).reshape(4, 64, 64)
labels = ms.segment(array, "lite-medsam", box=(14, 18, 52, 46, 2), server=sys.argv[1], server_token=sys.argv[2])
with Client(sys.argv[1], token=sys.argv[2]).open(array) as session:
    session.box((14, 18, 52, 46), index=2)
    assert (session.labels > 0).sum() == (labels > 0).sum()
assert "torch" not in sys.modules
print(int((labels > 0).sum()))
"""


def test_the_client_imports_no_torch(live_server):
    url, _ = live_server
    array = volume()
    done = subprocess.run([sys.executable, "-c", BLOCKER, url, TOKEN, array.tobytes().hex()], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == int((ms.segment(array, box=(*BOX, 2)) > 0).sum()) > 0


def test_serve_refuses_a_taken_port_and_bad_options_in_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
        assert f"Cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--max-sessions", "0"]) == 2
    assert "--max-sessions must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--preload", "no-such-model"]) == 2
    assert "Unknown model" in capsys.readouterr().err
