"""The FastAPI application behind `medseg serve`: the same core as the widget, the CLI and `segment()`.

Every route needs ``Authorization: Bearer <token>``. A client uploads an image once (a session); box and
point prompts come back as the changed region of the session's label map; `segment()` calls (propagation,
automatic 2-D/3-D, text-guided) run as tasks whose progress is polled and which can be cancelled. Models
load once per device and stay warm, with their box predictors' embedding caches.
"""
import asyncio
import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import Cancelled, MedsegError, PromptError
from .auth import token_matches
from .jobs import DeviceQueue, OutOfMemory, Task
from .sessions import SessionLimit, SessionStore, UnknownSession
from .wire import ARRAYS_HEADER, WireError, nbytes, pack, parse_header, unpack

log = logging.getLogger(__name__)
IMAGE_HEADER = "X-Medseg-Image"
INFO_HEADER = "X-Medseg-Info"


@dataclass
class ServerConfig:
    token: str
    devices: list[str] = field(default_factory=lambda: ["auto"])
    max_sessions: int = 8
    idle_timeout: float = 1800.0  # seconds without a request before a session is closed
    max_upload_bytes: int = 2 << 30  # decoded bytes of one upload
    max_voxels: int = 1 << 30
    max_side: int = 16384
    reap_interval: Optional[float] = None  # default: a quarter of idle_timeout, at most 30 s
    preload: list[str] = field(default_factory=list)  # model ids loaded at start


class Models:
    """Loaded models per (model id, device), kept for the server's lifetime, and their box predictors."""

    def __init__(self):
        self._loaded: dict = {}
        self._predictors: dict = {}
        self._lock = threading.Lock()

    def loaded(self, model: str, device: str):
        from ..models.load import load_model

        key = (model, device)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
        loaded = load_model(model, device=device)  # in the device's own worker: one load per key
        with self._lock:
            return self._loaded.setdefault(key, loaded)

    def predictor(self, model: str, device: str, precision: str):
        from ..inference.box2d import BoxPredictor, EmbeddingCache

        key = (model, device, precision)
        with self._lock:
            if key in self._predictors:
                return self._predictors[key]
        loaded = self.loaded(model, device)
        predictor = BoxPredictor(loaded, device=loaded.info.get("device"), precision=precision,
                                 cache=EmbeddingCache(max_items=256))
        with self._lock:
            return self._predictors.setdefault(key, predictor)

    def ids(self) -> list[str]:
        with self._lock:
            return sorted({f"{m}@{d}" for m, d in self._loaded})


def _resolve_devices(devices: list[str]) -> list[str]:
    from ..device import resolve_device

    resolved = []
    for name in devices:
        name = f"cuda:{name}" if name.isdigit() else name
        device = str(resolve_device(name))
        if device == "cuda":
            device = "cuda:0"
        if device not in resolved:
            resolved.append(device)
    return resolved


# --------------------------------------------------------------------------- requests

class BoxRequest(BaseModel):
    model: str = "lite-medsam"
    precision: str = "faithful"
    box: Optional[list[float]] = Field(None, min_length=4, max_length=4)
    points: Optional[list[list[float]]] = Field(None, max_length=256)
    point_labels: Optional[list[int]] = Field(None, max_length=256)
    axis: Optional[int] = None  # the numpy axis held fixed (volumes; default 0); None for 2-D images
    index: Optional[int] = None  # the slice along ``axis``
    label: int = Field(1, ge=1, le=int(np.iinfo(np.uint32).max))
    window: Optional[list[float]] = Field(None, min_length=2, max_length=2)
    overwrite: bool = False  # False: the mask fills background and its own label only
    write: bool = True  # False: the region holds the mask alone and the session's labels are unchanged


class TaskRequest(BaseModel):
    model: str = "lite-medsam"
    precision: str = "faithful"
    box: Optional[list[float]] = Field(None, min_length=4, max_length=5)
    points: Optional[list[list[float]]] = Field(None, max_length=256)
    point_labels: Optional[list[int]] = Field(None, max_length=256)
    report: Optional[str] = Field(None, max_length=20000)
    label: int = Field(1, ge=1, le=int(np.iinfo(np.uint32).max))
    propagate: bool = False
    window: Optional[list[float]] = Field(None, min_length=2, max_length=2)
    structures: Optional[list[int | str]] = Field(None, max_length=1024)
    mirroring: Optional[bool] = None
    write: bool = False  # True: non-zero results go into the session's labels (background only)


def _check_image(entry: dict, meta: dict, config: ServerConfig) -> None:
    shape = entry["shape"]
    channels = meta.get("channel_axis") is not None
    spatial = shape[:-1] if channels else shape
    if len(spatial) not in (2, 3):
        raise PromptError(f"Images are 2-D or 3-D (plus a last colour axis); got shape {shape}")
    if channels and shape[-1] not in (3, 4):
        raise PromptError(f"A colour image has 3 or 4 channels last; got shape {shape}")
    if min(spatial) < 2 or max(spatial) > config.max_side:
        raise PromptError(f"Each image side must be 2..{config.max_side} voxels; got shape {shape}")
    voxels = int(np.prod(spatial, dtype=np.int64))
    if voxels > config.max_voxels:
        raise PromptError(f"The image has {voxels} voxels, more than this server takes ({config.max_voxels})")


def _image_from(array: np.ndarray, meta: dict):
    from ..io.image import Image

    if not isinstance(meta, dict):
        raise PromptError(f"{IMAGE_HEADER} must be a JSON object")
    channel_axis = meta.get("channel_axis")
    if channel_axis not in (None, -1, array.ndim - 1):
        raise PromptError("channel_axis must be the last axis or null")
    ndim = array.ndim - (channel_axis is not None)
    try:
        return Image(array, meta.get("spacing", (1.0,) * ndim), meta.get("origin", (0.0,) * ndim),
                     np.asarray(meta.get("direction", np.eye(ndim).ravel().tolist()), dtype=float),
                     modality=str(meta.get("modality", "unknown")), intensity=str(meta.get("intensity", "raw")),
                     channel_axis=-1 if channel_axis is not None else None)
    except (ValueError, TypeError) as exc:
        raise PromptError(f"{IMAGE_HEADER}: the geometry does not fit the image ({exc})") from None


def _region(mask: np.ndarray):
    """(row slice, col slice) of the bounding box of a 2-D mask, or None when it is empty."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not rows.size:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _bbox(array: np.ndarray):
    """The bounding box (a tuple of slices) of the non-zero voxels, or None."""
    where = [np.nonzero(array.any(axis=tuple(a for a in range(array.ndim) if a != axis)))[0]
             for axis in range(array.ndim)]
    if not where[0].size:
        return None
    return tuple(slice(int(w[0]), int(w[-1]) + 1) for w in where)


def _write_region(session, index: tuple, mask: np.ndarray, label: int, overwrite: bool, write: bool) -> np.ndarray:
    """The label values in ``index`` (a box of the session's labels) after ``mask`` is written as ``label``."""
    if not write:
        return np.where(mask, label, 0).astype(np.min_scalar_type(label))
    session.label_dtype_for(label)
    current = session.labels[index]
    allowed = mask if overwrite else mask & ((current == 0) | (current == label))
    current[allowed] = label  # a view of the session's labels
    return current.copy()


# --------------------------------------------------------------------------- the application

def create_app(config: ServerConfig):
    devices = _resolve_devices(config.devices)
    queues = {device: DeviceQueue(device) for device in devices}
    models = Models()
    sessions = SessionStore(config.max_sessions, config.idle_timeout,
                            on_close=lambda session: queues[session.device].drop(session.id))
    tasks: dict[str, Task] = {}

    async def require_token(request: Request) -> None:
        header = request.headers.get("authorization")
        if not header:
            raise HTTPException(401, "Missing bearer token: send 'Authorization: Bearer <token>' with the token from "
                                     "the server's token file", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not token_matches(given.strip(), config.token):
            raise HTTPException(401, "Wrong server token: use the token from the server's token file",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        interval = config.reap_interval or max(0.05, min(30.0, config.idle_timeout / 4))

        async def reap():
            while True:
                await asyncio.sleep(interval)
                for session_id in sessions.reap():
                    log.info("Reaped idle session %s", session_id)
                    for task_id in [t for t, task in tasks.items() if task.session_id == session_id]:
                        tasks.pop(task_id, None)

        for model in config.preload:
            for device, queue in queues.items():
                queue.submit("preload", lambda device, model=model: models.loaded(model, device))
        reaper = asyncio.create_task(reap())
        try:
            yield
        finally:
            reaper.cancel()
            for queue in queues.values():
                queue.close()

    app = FastAPI(title="napari-medseg server", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None, dependencies=[Depends(require_token)])
    app.state.config, app.state.sessions, app.state.models, app.state.queues = config, sessions, models, queues

    def error(status: int, exc: Exception, **headers) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": type(exc).__name__}, status_code=status, headers=headers)

    @app.exception_handler(MedsegError)
    async def medseg_error(request, exc: MedsegError):
        if isinstance(exc, UnknownSession):
            return error(404, exc)
        if isinstance(exc, SessionLimit):
            return error(429, exc, **{"Retry-After": "30"})
        if isinstance(exc, OutOfMemory):
            return error(503, exc)
        if isinstance(exc, Cancelled):
            return error(409, exc)
        return error(422, exc)

    @app.exception_handler(WireError)
    async def wire_error(request, exc: WireError):
        return error(400, exc)

    async def run_on(session, fn):
        """``fn(device)`` in the session's device queue; the session counts as busy meanwhile."""
        session.busy(+1)
        try:
            return await asyncio.wrap_future(queues[session.device].submit(session.id, fn))
        finally:
            session.busy(-1)

    def arrays_response(arrays: dict, extra: dict | None = None, info: dict | None = None) -> Response:
        header, body = pack(arrays, extra=extra)
        headers = {ARRAYS_HEADER: header}
        if info is not None:
            headers[INFO_HEADER] = json.dumps(info, separators=(",", ":"))
        return Response(body, media_type="application/octet-stream", headers=headers)

    async def read_arrays(request: Request, check=None) -> dict:
        entries = parse_header(request.headers.get(ARRAYS_HEADER))
        declared = sum(nbytes(e) for e in entries)
        if declared > config.max_upload_bytes:
            raise HTTPException(413, f"The upload declares {declared} bytes; this server takes at most "
                                     f"{config.max_upload_bytes} (--max-upload-mb)")
        if check is not None:
            check(entries)
        limit = sum(sum(e["chunks"]) for e in entries)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) != limit):
            raise WireError(f"Content-Length {length} differs from the {limit} bytes the arrays declare")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"The body is longer than the {limit} bytes its arrays declare")
        return await run_in_threadpool(unpack, entries, body)

    @app.get("/status")
    async def status():
        return {"server": "napari-medseg", "version": __version__, "sessions": len(sessions),
                "max_sessions": config.max_sessions, "idle_timeout": config.idle_timeout,
                "queue": sum(q.queued + q.running for q in queues.values()),
                "devices": {d: {"queued": q.queued, "running": q.running, "done": q.done} for d, q in queues.items()},
                "models": models.ids(), "reaped": sessions.reaped,
                "limits": {"max_upload_bytes": config.max_upload_bytes, "max_voxels": config.max_voxels,
                           "max_side": config.max_side}}

    @app.post("/sessions")
    async def open_session(request: Request):
        sessions.check_room()  # before a large body is read
        try:
            meta = json.loads(request.headers.get(IMAGE_HEADER) or "{}")
        except ValueError as exc:
            raise WireError(f"{IMAGE_HEADER} is not JSON: {exc}") from None

        def check(entries):
            names = [e["name"] for e in entries]
            if names[0] != "image" or len(set(names)) != len(names) or not set(names) <= {"image", "labels"}:
                raise WireError("An upload holds 'image' and optionally 'labels'")
            _check_image(entries[0], meta if isinstance(meta, dict) else {}, config)

        arrays = await read_arrays(request, check)
        image = _image_from(arrays["image"], meta)
        labels = arrays.get("labels")
        if labels is None:
            labels = np.zeros(image.spatial_shape, np.uint16)
        elif labels.shape != image.spatial_shape or labels.dtype.kind not in "uib":
            raise PromptError(f"labels must be whole numbers of the image's shape {image.spatial_shape}, "
                              f"got {labels.dtype} {labels.shape}")
        elif labels.dtype.kind != "u":
            if labels.size and labels.min() < 0:
                raise PromptError("labels must not be negative")
            labels = labels.astype(np.min_scalar_type(int(labels.max()) if labels.size else 0))
        in_use = sessions.devices_in_use()
        device = min(devices, key=lambda d: (in_use.get(d, 0) + queues[d].queued, devices.index(d)))
        session = sessions.open(image, labels, device)
        return {"session": session.id, "device": device, "shape": list(image.spatial_shape),
                "labels_dtype": session.labels.dtype.str}

    @app.delete("/sessions/{session_id}")
    async def close_session(session_id: str):
        if not sessions.close(session_id):
            raise UnknownSession(f"No session {session_id} on this server")
        for task_id in [t for t, task in tasks.items() if task.session_id == session_id]:
            tasks.pop(task_id, None)
        return {"closed": session_id}

    @app.get("/sessions/{session_id}/labels")
    async def get_labels(session_id: str):
        return arrays_response({"labels": sessions.get(session_id).labels})

    @app.put("/sessions/{session_id}/labels")
    async def put_labels(session_id: str, request: Request):
        session = sessions.get(session_id)
        arrays = await read_arrays(request)
        labels = arrays.get("labels")
        if labels is None or labels.shape != session.labels.shape or labels.dtype.kind != "u":
            raise PromptError(f"labels must be unsigned whole numbers of shape {session.labels.shape}")
        session.labels = labels
        return {"session": session_id, "labels_dtype": labels.dtype.str}

    @app.post("/sessions/{session_id}/box")
    async def box(session_id: str, request: BoxRequest):
        from ..inference.precision import precision_policy
        from ..segmentation import plane_mask

        session = sessions.get(session_id)
        image = session.image
        precision = precision_policy(request.precision)
        axis = request.axis if image.ndim == 3 else None
        if image.ndim == 3:
            axis = 0 if axis is None else axis
            if not 0 <= axis < 3 or request.index is None:
                raise PromptError("For a volume, give the plane's axis (0..2) and the slice index")
            if not 0 <= request.index < image.spatial_shape[axis]:
                raise PromptError(f"Slice {request.index} is outside the volume (0..{image.spatial_shape[axis] - 1})")
        elif request.index is not None or request.axis is not None:
            raise PromptError("This 2-D image has no slices; give the prompt without an axis or index")
        if request.box is None and not request.points:
            raise PromptError("Give a box or at least one point")
        points = np.asarray(request.points, dtype=float) if request.points else None
        point_labels = (np.asarray(request.point_labels if request.point_labels is not None else [1] * len(points))
                        if points is not None else None)
        if points is not None and points.shape[1:] != (2,):
            raise PromptError("Points are (x, y) pairs in the plane's pixels")

        def job(device):
            predictor = models.predictor(request.model, device, precision)
            limits = tuple(request.window) if request.window else session.limits()
            mask = plane_mask(predictor, image, axis, request.index, limits, request.box, points, point_labels)
            where = _region(mask)
            if where is None:
                return None
            index = list(where)
            if axis is not None:
                index.insert(axis, request.index)
            region = _write_region(session, tuple(index), mask[where], request.label, request.overwrite,
                                   request.write)
            offset = [s.start for s in where]
            if axis is not None:
                offset.insert(axis, request.index)
                region = np.expand_dims(region, axis)
            return region, offset, predictor.cache_hit

        result = await run_on(session, job)
        if result is None:
            return arrays_response({"region": np.zeros((0,) * len(image.spatial_shape), np.uint8)},
                                   info={"empty": True, "labels_dtype": session.labels.dtype.str})
        region, offset, hit = result
        return arrays_response({"region": region}, extra={"region": {"offset": offset}},
                               info={"empty": False, "cached": hit, "labels_dtype": session.labels.dtype.str})

    @app.post("/sessions/{session_id}/tasks")
    async def start_task(session_id: str, request: TaskRequest):
        from ..models.registry import get_card
        from ..segmentation import check_prompts

        session = sessions.get(session_id)
        get_card(request.model)  # an unknown model is a 422 now, not a failed task later
        check_prompts(session.image, request.box, request.points, request.point_labels,
                      get_card(request.model).task)
        task = Task(session_id, "segment")
        kwargs = request.model_dump(exclude={"model", "write"})
        kwargs["window"] = tuple(kwargs["window"]) if kwargs["window"] else None

        def job(device):
            from ..segmentation import segment

            def run():
                loaded = models.loaded(request.model, device)
                labels = segment(session.image, loaded, progress=task.progress, cancel=lambda: task.cancelled,
                                 **kwargs)
                where = _bbox(labels)
                if request.write and where is not None:
                    session.label_dtype_for(int(labels.max()))
                    current = session.labels[where]
                    new = labels[where]
                    fill = (new != 0) & (current == 0)
                    current[fill] = new[fill]
                return labels, where, loaded.classes

            task.run(run)

        session.tasks[task.id] = task
        tasks[task.id] = task
        session.busy(+1)
        future = queues[session.device].submit(session.id, job)

        def finished(_future):
            session.busy(-1)
            if _future.cancelled():
                task.cancel()
                task.state = "cancelled"

        future.add_done_callback(finished)
        return task.snapshot()

    def get_task(task_id: str) -> Task:
        task = tasks.get(task_id)
        if task is None:
            raise UnknownSession(f"No task {task_id} on this server (its session was closed or the server restarted)")
        sessions.get(task.session_id)  # keeps the session's lease while its client polls
        return task

    @app.get("/tasks/{task_id}")
    async def task_state(task_id: str):
        return get_task(task_id).snapshot()

    @app.post("/tasks/{task_id}/cancel")
    async def cancel_task(task_id: str):
        task = get_task(task_id)
        task.cancel()
        return task.snapshot()

    @app.get("/tasks/{task_id}/result")
    async def task_result(task_id: str):
        task = get_task(task_id)
        state = task.snapshot()
        if state["state"] != "done":
            detail = state["error"] or f"Task {task_id} is {state['state']}"
            return JSONResponse({"detail": detail, "code": state["code"] or "TaskNotDone", "state": state["state"]},
                                status_code=409 if state["state"] in ("queued", "running", "cancelled") else 422)
        labels, where, classes = task.result
        tasks.pop(task_id, None)  # fetched once: the session does not keep every result it ever had
        sessions.get(task.session_id).tasks.pop(task_id, None)
        info = {"shape": list(labels.shape), "dtype": labels.dtype.str,
                "classes": {str(k): v for k, v in (classes or {}).items()}}
        if where is None:
            return arrays_response({"region": np.zeros((0,) * labels.ndim, labels.dtype)}, info=info)
        return arrays_response({"region": labels[where]}, extra={"region": {"offset": [s.start for s in where]}},
                               info=info)

    return app


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning",
          on_started=None) -> None:
    """Run the server until interrupted (``on_started(url)`` once it listens)."""
    import uvicorn

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                           timeout_graceful_shutdown=5))
    if on_started is None:
        server.run()
        return

    async def main():
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()
            on_started(f"http://{bound[0]}:{bound[1]}")
        await serving

    asyncio.run(main())
