"""GPU work serialised per device with a fair queue, and long predictions as tasks with progress and cancel.

Each device has one worker thread: its jobs never overlap (one model call at a time on a GPU), and the queue
takes one job from each session in turn, so a session that queued a whole cohort of requests cannot starve
a clinician's single box. Running out of memory fails that job alone: the error goes back to its request and
the worker goes on with the next one.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import Future
from typing import Callable

from ..errors import Cancelled, MedsegError

log = logging.getLogger(__name__)


class OutOfMemory(MedsegError):
    """A request needed more memory than its device had left; other requests are unaffected."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, MPS) or an allocator RuntimeError/MemoryError, without importing torch."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


class DeviceQueue:
    """One worker thread for ``device``; ``submit(owner, fn)`` runs ``fn(device)`` there and returns a Future.

    Owners (sessions) are served round robin: each turn takes the oldest job of the next owner in line.
    """

    def __init__(self, device: str):
        self.device = device
        self._queues: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Condition()
        self._closed = False
        self.running = 0
        self.done = 0
        self._thread = threading.Thread(target=self._work, name=f"medseg-{device}", daemon=True)
        self._thread.start()

    def submit(self, owner: str, fn: Callable[[str], object]) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise MedsegError("The server is shutting down")
            self._queues.setdefault(owner, deque()).append((fn, future))
            self._lock.notify()
        return future

    @property
    def queued(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def drop(self, owner: str) -> None:
        """Cancel the jobs ``owner`` still has waiting (a closed or reaped session)."""
        with self._lock:
            jobs = self._queues.pop(owner, ())
        for _fn, future in jobs:
            future.cancel()

    def _take(self):
        owner, jobs = next(iter(self._queues.items()))
        job = jobs.popleft()
        del self._queues[owner]
        if jobs:
            self._queues[owner] = jobs  # to the back of the line
        return job

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queues and not self._closed:
                    self._lock.wait()
                if not self._queues:
                    return
                fn, future = self._take()
                self.running = 1
            try:
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(self.device))
                except BaseException as exc:  # noqa: BLE001 - every failure goes back to its own request
                    if is_out_of_memory(exc):
                        _release_memory(self.device)
                        exc = OutOfMemory(f"Out of memory on {self.device} for this request "
                                          f"({type(exc).__name__}); try a smaller image or region, or another device")
                    future.set_exception(exc)
            finally:
                with self._lock:
                    self.running = 0
                    self.done += 1

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            pending = [job for jobs in self._queues.values() for job in jobs]
            self._queues.clear()
            self._lock.notify_all()
        for _fn, future in pending:
            future.cancel()
        self._thread.join(timeout)


class Task:
    """A long prediction (propagation, automatic, text-guided): state, progress and a cancel flag, polled."""

    def __init__(self, session_id: str, kind: str):
        self.id = uuid.uuid4().hex
        self.session_id, self.kind = session_id, kind
        self.state = "queued"  # queued, running, done, failed, cancelled
        self.done = self.total = 0
        self.message = ""
        self.error: str | None = None
        self.code: str | None = None
        self.result = None
        self.created = time.monotonic()
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    def progress(self, done: int, total: int, message: str) -> None:
        with self._lock:
            self.done, self.total, self.message = int(done), int(total), str(message)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` (in the device's worker), recording its result or its error."""
        with self._lock:
            if self._cancel.is_set():
                self.state, self.message = "cancelled", "Cancelled before it started"
                return
            self.state = "running"
        try:
            result = fn()
        except Cancelled as exc:
            with self._lock:
                self.state, self.message = "cancelled", str(exc)
            return
        except BaseException as exc:  # noqa: BLE001 - the client reads it
            if is_out_of_memory(exc):
                exc = OutOfMemory(f"Out of memory for this task ({type(exc).__name__})")
            with self._lock:
                self.state, self.code = "failed", type(exc).__name__
                self.error = str(exc) if isinstance(exc, MedsegError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, MedsegError):
                log.error("Task %s failed", self.id, exc_info=(type(exc), exc, exc.__traceback__))
            return
        with self._lock:
            self.result, self.state = result, "done"

    def snapshot(self) -> dict:
        with self._lock:
            return {"task": self.id, "session": self.session_id, "kind": self.kind, "state": self.state,
                    "done": self.done, "total": self.total, "message": self.message, "error": self.error,
                    "code": self.code}
