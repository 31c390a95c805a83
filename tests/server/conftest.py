"""A real uvicorn server on 127.0.0.1 (a free port) in a thread, always shut down."""
import contextlib
import threading
import time

import numpy as np
import pytest

TOKEN = "test-token-0123456789"


@contextlib.contextmanager
def running_server(**options):
    import uvicorn

    from napari_medseg.server.app import ServerConfig, create_app

    app = create_app(ServerConfig(token=TOKEN, devices=["cpu"], **options))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def live_server():
    """A server with LiteMedSAM (bundled weights) loaded at start, as `medseg serve --preload` does."""
    with running_server(preload=["lite-medsam"]) as (url, app):
        deadline = time.monotonic() + 120
        while not app.state.models.ids():
            assert time.monotonic() < deadline, "the model did not load"
            time.sleep(0.05)
        yield url, app


def volume(seed: int = 0) -> np.ndarray:
    """A small int16 volume with one bright block (slices 1..3) over noise."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 30, (4, 64, 64)).astype(np.int16)
    array[1:4, 20:44, 16:50] += 400
    return array
