"""Server sessions: one uploaded image, its label map and its tasks, leased to a client and reaped when idle."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from ..errors import MedsegError
from ..io.image import Image


class SessionLimit(MedsegError):
    """The server already holds --max-sessions sessions."""


class UnknownSession(MedsegError):
    """A session id the server does not hold (closed, reaped, or the server restarted)."""


@dataclass
class Session:
    id: str
    image: Image
    labels: np.ndarray
    device: str
    last_used: float = field(default_factory=time.monotonic)
    tasks: dict = field(default_factory=dict)
    active: int = 0  # requests in flight: a session doing work is never reaped
    _limits: tuple | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def busy(self, change: int) -> None:
        """Count a request in (+1) or out (-1); the device workers and the event loop both do."""
        with self._lock:
            self.active += change
            self.last_used = time.monotonic()

    def limits(self) -> tuple[float, float] | None:
        """The default display range of box prompts (segment()'s), computed once per session."""
        from ..inference.intensity import display_limits

        if self.image.is_rgb:
            return None
        if self._limits is None:
            self._limits = display_limits(self.image.array, self.image.intensity)
        return self._limits

    def label_dtype_for(self, label: int) -> None:
        """Widen the label map when a new value does not fit its dtype."""
        if label > np.iinfo(self.labels.dtype).max:
            self.labels = self.labels.astype(np.min_scalar_type(label))


class SessionStore:
    """Sessions by id, at most ``max_sessions``; ``reap()`` closes those idle for ``idle_timeout`` seconds."""

    def __init__(self, max_sessions: int, idle_timeout: float, on_close=None):
        self.max_sessions, self.idle_timeout = int(max_sessions), float(idle_timeout)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._on_close = on_close
        self.reaped = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def check_room(self) -> None:
        with self._lock:
            full = len(self._sessions) >= self.max_sessions
        if full:
            raise SessionLimit(f"The server holds its maximum of {self.max_sessions} sessions (--max-sessions); "
                               "close a session or try again when an idle one has been reaped")

    def open(self, image: Image, labels: np.ndarray, device: str) -> Session:
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimit(f"The server holds its maximum of {self.max_sessions} sessions "
                                   "(--max-sessions); close a session or try again later")
            session = Session(uuid.uuid4().hex, image, labels, device)
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise UnknownSession(f"No session {session_id} on this server (closed, reaped after "
                                     f"{self.idle_timeout:g} s idle, or the server restarted)")
            session.last_used = time.monotonic()
        return session

    def devices_in_use(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for session in self._sessions.values():
                counts[session.device] = counts.get(session.device, 0) + 1
        return counts

    def close(self, session_id: str) -> bool:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            for task in session.tasks.values():
                task.cancel()
            if self._on_close:
                self._on_close(session)
        return session is not None

    def reap(self, now: float | None = None) -> list[str]:
        """Close the sessions idle for longer than ``idle_timeout`` (none with work in flight)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [s.id for s in self._sessions.values()
                    if not s.active and not any(t.state in ("queued", "running") for t in s.tasks.values())
                    and now - s.last_used > self.idle_timeout]
        for session_id in idle:
            if self.close(session_id):
                self.reaped += 1
        return idle

    def all(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())
