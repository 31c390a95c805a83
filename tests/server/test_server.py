"""A real server on 127.0.0.1: tokens, bad payloads, limits, sessions, identical masks, concurrent clients."""
import json
import threading
import time

import httpx
import numpy as np
import pytest

import napari_medseg as ms
from napari_medseg.errors import Cancelled, MedsegError, PromptError
from napari_medseg.server.client import AuthError, Client, ServerBusy
from napari_medseg.server.wire import ARRAYS_HEADER, pack

from .conftest import TOKEN, running_server, volume

BOX = (14, 18, 52, 46)


def test_every_request_needs_the_token(live_server):
    url, _ = live_server
    missing = httpx.get(f"{url}/status")
    assert missing.status_code == 401 and "Missing bearer token" in missing.json()["detail"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer wrong", "Basic " + TOKEN, TOKEN):
        wrong = httpx.post(f"{url}/sessions", headers={"Authorization": header})
        assert wrong.status_code == 401 and "Wrong server token" in wrong.json()["detail"]
    assert httpx.get(f"{url}/openapi.json").status_code == 404  # no schema or docs pages are served
    with pytest.raises(AuthError, match=r"refused the token \(401\)"):
        Client(url, token="wrong").connect()
    assert Client(url, token=TOKEN).connect()["server"] == "napari-medseg"


def test_malformed_and_oversized_payloads_are_refused_and_the_server_stays_up(live_server):
    url, app = live_server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    header, body = pack({"image": volume()})
    cases = [
        ({}, body, 400, "missing X-Medseg-Arrays"),
        ({ARRAYS_HEADER: "[{"}, body, 400, "not JSON"),
        ({ARRAYS_HEADER: header}, body[:-10], 400, "declare"),
        ({ARRAYS_HEADER: header, "X-Medseg-Image": "{"}, body, 400, "not JSON"),
        ({ARRAYS_HEADER: pack({"image": np.zeros((2, 2, 2, 2, 2), np.uint8)})[0]}, b"", 400, "up to 4"),
        ({ARRAYS_HEADER: pack({"image": np.zeros((2, 3, 3, 3), np.uint8)})[0]}, b"", 422, "2-D or 3-D"),
        ({ARRAYS_HEADER: json.dumps([{"name": "image", "dtype": "<f8", "shape": [4096, 4096, 4096],
                                      "compression": "zlib", "chunks": [10]}])}, b"0" * 10, 413, "at most"),
        ({ARRAYS_HEADER: pack({"image": np.zeros((4, 4), np.uint8), "labels": np.zeros((5, 4), np.uint8)})[0]},
         b"", 400, ""),
    ]
    for headers, content, status, message in cases:
        answer = httpx.post(f"{url}/sessions", headers={**auth, **headers}, content=content)
        assert answer.status_code == status, (headers, answer.text)
        assert message in answer.json()["detail"]
    header, body = pack({"image": np.zeros((4, 4), np.uint8), "labels": np.zeros((5, 4), np.uint8)},
                        compression="none")
    answer = httpx.post(f"{url}/sessions", headers={**auth, ARRAYS_HEADER: header}, content=body)
    assert answer.status_code == 422 and "image's shape" in answer.json()["detail"]
    client = Client(url, token=TOKEN)
    with client.open(volume()) as session:
        for payload, message in (({"box": [1, 2, 3]}, "box"), ({"box": [1, 2, 3, 4], "index": 9}, "outside"),
                                 ({"box": [1, 2, 3, 4]}, "axis"), ({"box": [70, 70, 80, 80], "index": 1}, "no area"),
                                 ({"box": [1, 2, 3, 4], "index": 1, "precision": "fp64"}, "precision")):
            answer = httpx.post(f"{url}/sessions/{session.id}/box", headers=auth, json=payload, timeout=60)
            assert answer.status_code == 422 and message in answer.text, answer.text
        with pytest.raises(PromptError, match="outside the volume"):
            session.box(BOX, index=7)
        assert httpx.post(f"{url}/sessions/{session.id}/box", headers={**auth, "content-type": "application/json"},
                          content=b"{not json").status_code == 422
    assert httpx.post(f"{url}/sessions/nope/box", headers=auth, json={"box": [1, 2, 3, 4]}).status_code == 404
    assert client.status()["sessions"] == 0  # still serving, nothing left open


def test_remote_results_are_the_local_ones(live_server):
    url, _ = live_server
    image = volume()
    for kwargs in ({"box": (*BOX, 2)}, {"box": (*BOX, 2), "propagate": True, "label": 3}):
        remote = ms.segment(image, "lite-medsam", server=url, server_token=TOKEN, **kwargs)
        local = ms.segment(image, "lite-medsam", **kwargs)
        assert remote.dtype == local.dtype and np.array_equal(remote, local) and local.any()
    flat = image[2]
    assert np.array_equal(ms.segment(flat, server=url, server_token=TOKEN, box=BOX), ms.segment(flat, box=BOX))
    with pytest.raises(PromptError, match="slice index"):
        ms.segment(image, server=url, server_token=TOKEN, box=BOX)  # checked here, before any upload


def test_box_answers_the_changed_region_and_keeps_labels_in_step(live_server):
    url, _ = live_server
    image = volume()
    local = ms.segment(image, "lite-medsam", box=(*BOX, 2), label=2)
    existing = np.zeros(image.shape, np.uint16)
    existing[2, 30, 30] = 7  # another object inside the box: a new mask fills background only
    with Client(url, token=TOKEN).open(image, labels=existing) as session:
        offset, region = session.box(BOX, index=2, label=2)
        rows, cols = np.nonzero(local[2])
        assert offset == (2, rows.min(), cols.min())
        assert region.shape == (1, rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
        expected = np.where(local > 0, 2, 0)
        expected[2, 30, 30] = 7
        assert np.array_equal(session.labels, expected)
        assert np.array_equal(session.server_labels(), session.labels)
        session.box(BOX, index=2, label=5, overwrite=True)
        assert session.labels[2, 30, 30] == 5
        assert np.array_equal(session.server_labels(), session.labels)
        before = session.labels.copy()
        _, mask = session.box(BOX, index=2, label=9, write=False)
        assert set(np.unique(mask)) == {0, 9} and np.array_equal(session.server_labels(), before)


def test_sessions_are_limited_and_idle_ones_reaped_then_reopened_with_their_labels():
    with running_server(max_sessions=2, idle_timeout=0.3, reap_interval=0.05) as (url, app):
        client = Client(url, token=TOKEN)
        first, second = client.open(volume()), client.open(volume(1))
        with pytest.raises(ServerBusy, match="maximum of 2 sessions"):
            client.open(volume(2))
        second.close()
        first.labels[1, 5, 5] = 4
        first.push_labels()
        deadline = time.monotonic() + 10
        while client.status()["reaped"] < 1:
            assert time.monotonic() < deadline, "the idle session was not reaped"
            time.sleep(0.05)
        assert client.status()["sessions"] == 0
        first.box(BOX, index=2)  # the server lost the session: opened again with the image and its labels
        assert first.reopened == 1 and first.labels[1, 5, 5] == 4
        assert np.array_equal(first.server_labels(), first.labels)


def test_cancelled_task_and_task_errors(live_server):
    url, app = live_server
    with Client(url, token=TOKEN).open(volume()) as session:
        with pytest.raises(Cancelled):
            session.segment(box=[*BOX, 2], propagate=True, cancel=lambda: True)
        with pytest.raises(MedsegError, match="Unknown model 'no-such-model'"):
            session.segment("no-such-model", box=[*BOX, 2])


def test_eight_concurrent_clients(live_server):
    url, _ = live_server
    image = volume()
    reference = ms.segment(image, "lite-medsam", box=(*BOX, 2)) > 0
    errors, masks = [], []

    def client_run():
        try:
            with Client(url, token=TOKEN).open(image) as session:
                for _ in range(4):
                    offset, region = session.box(BOX, index=2, write=False)
                    mask = np.zeros(image.shape, bool)
                    mask[tuple(slice(o, o + s) for o, s in zip(offset, region.shape))] = region > 0
                    masks.append(mask)
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=client_run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(masks) == 32
    assert all(np.array_equal(mask, reference) for mask in masks)


def test_the_least_busy_server_is_chosen():
    with running_server() as (busy_url, busy_app), running_server() as (idle_url, _):
        gate = threading.Event()
        queue = busy_app.state.queues["cpu"]
        queue.submit("someone", lambda device: gate.wait(10))
        try:
            client = Client([busy_url, idle_url], token=TOKEN)
            client.connect()
            assert client.url == idle_url
            client = Client([busy_url, "http://127.0.0.1:9"], token=TOKEN)  # one unreachable: skipped
            client.connect()
            assert client.url == busy_url
        finally:
            gate.set()
