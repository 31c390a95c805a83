"""The client of `medseg serve`: numpy, httpx and the standard library only (never torch), so that a laptop's
napari, `medseg segment --server` and `segment(..., server=URL)` start fast.

``Client(urls, token)`` picks the least busy of several servers (their /status queue); ``client.open(image)``
uploads an image once and returns a `RemoteSession`, which keeps a copy of the session's label map: box prompts
apply the changed region the server returns, and when the server restarts (or reaped the session) the session
is opened again with the image and these labels, so nothing drawn is lost. Every request has a timeout: a killed
server gives a clear `ServerUnavailable`, never a hung client.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Sequence

import numpy as np

from ..errors import Cancelled, MedsegError, PromptError
from .auth import client_token
from .wire import ARRAYS_HEADER, pack, parse_header, unpack

IMAGE_HEADER = "X-Medseg-Image"
INFO_HEADER = "X-Medseg-Info"


class ServerError(MedsegError):
    """The server answered with an error (its message is kept)."""


class AuthError(ServerError):
    """The server refused the token (HTTP 401)."""


class ServerUnavailable(ServerError):
    """No server could be reached in time (down, restarting, wrong address, or not answering)."""


class ServerBusy(ServerError):
    """The server holds its maximum number of sessions (HTTP 429)."""


def _timeout(read: float):
    import httpx

    return httpx.Timeout(connect=5.0, read=read, write=max(60.0, read), pool=10.0)


class Client:
    """A connection to one of ``urls`` (a URL or a list; the least busy is chosen at the first request).

    ``token`` defaults to ``token_file``'s, then $MEDSEG_SERVER_TOKEN. ``timeout``: seconds a request may wait
    for an answer; ``reconnect_timeout``: how long a session waits for a restarting server before giving up.
    """

    def __init__(self, urls: str | Sequence[str], token: str | None = None, token_file=None, *,
                 timeout: float = 120.0, reconnect_timeout: float = 30.0, compression: str = "zlib"):
        import httpx

        self.urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else list(urls))]
        if not self.urls:
            raise MedsegError("No server URL given")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise MedsegError(f"A server URL starts with http:// or https:// (got {url!r})")
        self.token = client_token(token, token_file)
        self.timeout, self.reconnect_timeout, self.compression = timeout, reconnect_timeout, compression
        self.url: str | None = None
        self._http = httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=_timeout(timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- choosing a server
    def statuses(self) -> dict[str, dict | Exception]:
        """Each server's /status, or the error that reaching it gave (a wrong token raises AuthError)."""
        import httpx

        found: dict[str, dict | Exception] = {}
        for url in self.urls:
            try:
                found[url] = self._check(self._http.get(f"{url}/status", timeout=_timeout(5.0)))
            except httpx.HTTPError as exc:
                found[url] = exc
        return found

    def connect(self) -> dict:
        """Pick the least busy reachable server (fewest queued jobs, then fewest sessions); its status."""
        statuses = self.statuses()
        alive = {url: s for url, s in statuses.items() if isinstance(s, dict)}
        if not alive:
            reasons = "; ".join(f"{url}: {_describe(exc)}" for url, exc in statuses.items())
            raise ServerUnavailable(f"Cannot reach the medseg server ({reasons})")
        self.url = min(alive, key=lambda u: (alive[u]["queue"], alive[u]["sessions"] / max(1, alive[u]["max_sessions"]),
                                             self.urls.index(u)))
        return alive[self.url]

    def status(self) -> dict:
        return self.connect() if self.url is None else self._check(self._http.get(f"{self.url}/status",
                                                                                  timeout=_timeout(5.0)))

    # ---- requests
    @staticmethod
    def _check(response):
        if response.status_code < 400:
            if response.headers.get("content-type", "").startswith("application/json"):
                return response.json()
            return response
        try:
            body = response.json()
            detail, code = body.get("detail"), body.get("code")
        except ValueError:
            detail, code = response.text[:200], None
        if isinstance(detail, list):  # FastAPI's validation errors
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
        message = f"server: {detail}"
        if response.status_code == 401:
            raise AuthError(f"The server refused the token (401): {detail}")
        if response.status_code == 429:
            raise ServerBusy(message)
        if response.status_code == 404 and code == "UnknownSession":
            raise _Gone(message)
        if code == "Cancelled":
            raise Cancelled(detail)
        if code == "PromptError" or response.status_code == 422 and code is None:
            raise PromptError(detail)
        raise ServerError(f"{message} (HTTP {response.status_code})")

    def request(self, method: str, path: str, **kwargs):
        import httpx

        if self.url is None:
            self.connect()
        try:
            return self._check(self._http.request(method, f"{self.url}{path}", **kwargs))
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(f"The medseg server at {self.url} did not answer in time ({_describe(exc)})") from None
        except httpx.TransportError as exc:
            raise _Lost(f"Lost the medseg server at {self.url} ({_describe(exc)})") from None

    def wait_for_server(self) -> None:
        """Wait (up to ``reconnect_timeout``) until a server answers again."""
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            try:
                self.connect()
                return
            except ServerUnavailable:
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"The medseg server did not come back within {self.reconnect_timeout:g} s "
                                            f"({', '.join(self.urls)})") from None
                time.sleep(0.2)

    def open(self, image, labels: np.ndarray | None = None) -> "RemoteSession":
        """Upload ``image`` (an `Image`, path or array) and, if given, its labels: a new session."""
        from ..segmentation import as_image

        return RemoteSession(self, as_image(image), labels)


class _Lost(ServerUnavailable):
    """The connection broke mid-request (the server was killed or restarted)."""


class _Gone(ServerError):
    """The server no longer holds the session (restarted, or reaped it)."""


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _image_meta(image) -> dict:
    return {"spacing": list(image.spacing), "origin": list(image.origin), "direction": image.direction.ravel().tolist(),
            "modality": image.modality, "intensity": image.intensity,
            "channel_axis": None if image.channel_axis is None else -1}


def _arrays(response) -> tuple[dict[str, np.ndarray], list[dict], dict]:
    entries = parse_header(response.headers.get(ARRAYS_HEADER))
    info = json.loads(response.headers.get(INFO_HEADER) or "{}")
    return unpack(entries, response.content), entries, info


class RemoteSession:
    """One image on the server and this client's copy of its label map (``labels``)."""

    def __init__(self, client: Client, image, labels: np.ndarray | None = None):
        if image.channel_axis not in (None, -1, image.array.ndim - 1):
            raise MedsegError("Only a last colour axis travels to the server")
        self.client, self.image = client, image
        self.labels = (np.zeros(image.spatial_shape, np.uint16) if labels is None
                       else np.array(labels, copy=True))
        if self.labels.shape != tuple(image.spatial_shape):
            raise MedsegError(f"labels have shape {self.labels.shape}, the image {image.spatial_shape}")
        self.id: str | None = None
        self.reopened = 0  # how often the session was opened again (server restarts)
        self.classes: dict[int, str] = {}
        self._open()

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        header, body = pack({"image": self.image.array, "labels": self.labels}, compression=self.client.compression)
        answer = self.client.request("POST", "/sessions", content=body,
                                     headers={ARRAYS_HEADER: header, IMAGE_HEADER: json.dumps(_image_meta(self.image))})
        self.id, self.device = answer["session"], answer["device"]

    def _call(self, method: str, path: str, **kwargs):
        """A session request; if the server lost the session or restarted, open it again (same image, these
        labels) and repeat the request once."""
        try:
            return self.client.request(method, path.format(id=self.id), **kwargs)
        except (_Lost, _Gone):
            self.client.wait_for_server()
            self._open()
            self.reopened += 1
            return self.client.request(method, path.format(id=self.id), **kwargs)

    def close(self) -> None:
        if self.id is None:
            return
        try:
            self.client.request("DELETE", f"/sessions/{self.id}")
        except (ServerError, MedsegError):
            pass  # a server that is gone has no session to close
        self.id = None

    def _widen(self, dtype: str) -> None:
        if np.dtype(dtype).itemsize > self.labels.dtype.itemsize:
            self.labels = self.labels.astype(dtype)

    # ---- prompts
    def box(self, box=None, *, index: int | None = None, axis: int | None = None, points=None, point_labels=None,
            model: str = "lite-medsam", precision: str = "faithful", label: int = 1, window=None,
            overwrite: bool = False, write: bool = True):
        """The mask of a box (x0, y0, x1, y1) and/or points (x, y) on plane ``index`` along ``axis`` (volumes;
        default axis 0), in the plane's pixels. Returns ``(offset, region)`` (None when the model found nothing):
        the label values of the changed box of the label map, which ``labels`` now holds too (``write``), or
        the mask alone as ``label`` (``write=False``: the session's labels stay as they are)."""
        payload = {"model": model, "precision": precision, "label": int(label), "overwrite": overwrite,
                   "write": write, "box": None if box is None else [float(v) for v in box],
                   "points": None if points is None else [[float(v) for v in p] for p in points],
                   "point_labels": None if point_labels is None else [int(v) for v in point_labels],
                   "window": None if window is None else [float(v) for v in window],
                   "index": None if index is None else int(index), "axis": None if axis is None else int(axis)}
        arrays, entries, info = _arrays(self._call("POST", "/sessions/{id}/box", json=payload))
        if info.get("empty"):
            return None
        region, offset = arrays["region"], entries[0]["offset"]
        if write:
            self._widen(info["labels_dtype"])
            self.labels[tuple(slice(o, o + s) for o, s in zip(offset, region.shape))] = region
        return tuple(offset), region

    def segment(self, model: str = "lite-medsam", *, progress: Callable | None = None,
                cancel: Callable[[], bool] | None = None, write: bool = False, poll: float = 0.1,
                **kwargs) -> np.ndarray:
        """`segment()` on the server (any model; box, points, propagate, report, structures, ...): the full
        label map. Progress is polled; ``cancel()`` True cancels the task on the server (`Cancelled`)."""
        payload = {"model": model, "write": write, **{k: _plain(v) for k, v in kwargs.items()}}
        state = self._call("POST", "/sessions/{id}/tasks", json=payload)
        task = state["task"]
        while state["state"] in ("queued", "running"):
            if progress is not None:
                progress(state["done"], state["total"], state["message"])
            if cancel is not None and cancel():
                self.client.request("POST", f"/tasks/{task}/cancel")
            time.sleep(poll)
            try:
                state = self.client.request("GET", f"/tasks/{task}")
            except (_Lost, _Gone):  # the server restarted: the task is gone with it; run it again
                self.client.wait_for_server()
                self._open()
                self.reopened += 1
                return self.segment(model, progress=progress, cancel=cancel, write=write, poll=poll, **kwargs)
        if state["state"] == "cancelled":
            raise Cancelled(state["message"] or "Cancelled on the server")
        if state["state"] == "failed":
            raise (PromptError if state["code"] == "PromptError" else ServerError)(state["error"])
        arrays, entries, info = _arrays(self.client.request("GET", f"/tasks/{task}/result"))
        labels = np.zeros(info["shape"], dtype=info["dtype"])
        region = arrays["region"]
        if region.size:
            where = tuple(slice(o, o + s) for o, s in zip(entries[0]["offset"], region.shape))
            labels[where] = region
            if write:
                self._widen(info["dtype"])
                fill = (region != 0) & (self.labels[where] == 0)
                self.labels[where][fill] = region[fill]
        self.classes = {int(k): v for k, v in info.get("classes", {}).items()}
        return labels

    def server_labels(self) -> np.ndarray:
        """The server's copy of the label map."""
        arrays, _, _ = _arrays(self._call("GET", "/sessions/{id}/labels"))
        return arrays["labels"]

    def push_labels(self, labels: np.ndarray | None = None) -> None:
        """Replace the server's label map with ``labels`` (default: this client's copy, e.g. after brush edits)."""
        if labels is not None:
            self.labels = np.array(labels, copy=True)
        header, body = pack({"labels": self.labels}, compression=self.client.compression)
        self._call("PUT", "/sessions/{id}/labels", content=body, headers={ARRAYS_HEADER: header})


def _plain(value):
    """Prompt values as JSON (tuples and numpy numbers to lists and Python numbers)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def remote_segment(image, model: str, server, token: str | None = None, *, progress=None, cancel=None,
                   **kwargs) -> np.ndarray:
    """`segment()` run on ``server`` (a URL, a list of URLs, or a `Client`): same arguments, same result."""
    client = server if isinstance(server, Client) else Client(server, token)
    try:
        with client.open(image) as session:
            return session.segment(model, progress=progress, cancel=cancel, **kwargs)
    finally:
        if client is not server:
            client.close()
