"""Runs core functions off the GUI thread with a progress bar and a cancel button; warnings the core
logs meanwhile (a float32 fallback, a smaller batch after running out of GPU memory) become notifications.

Every worker of ours comes from ``create_worker`` here: errors never re-raise on the GUI thread (superqt's
default, which shows each failure twice and aborts a process without napari's error hook), and each worker
is tracked until it has finished. Closing a main window cancels the tasks of the TaskRunners inside it and
waits for them and for the unowned workers (the device listing): a worker thread that outlives its window
emits into deleted signal objects and aborts the process (exit 134)."""
from __future__ import annotations

import logging
import threading
import traceback
from typing import Callable

from qtpy.QtCore import QEvent, QObject, Signal
from qtpy.QtWidgets import QApplication, QHBoxLayout, QMainWindow, QProgressBar, QPushButton, QWidget

log = logging.getLogger(__name__)
# workers started and not yet finished (their finished signal not yet delivered) -> the TaskRunner that
# can cancel them, or None
_live: dict = {}
CLOSE_TIMEOUT_MS = 120000  # how long closing a window waits for its workers (a model load can take 30 s)


def create_worker(fn: Callable, *args, _owner: "TaskRunner | None" = None, **kwargs):
    """A superqt worker (not started) whose errors are logged once, never re-raised; tracked until finished.

    Python warnings raised in the thread are logged too (napari's worker would show them as notifications).
    Every main window open now waits for it before closing (and cancels it first if ``_owner`` is inside).
    """
    from superqt.utils import create_worker as superqt_worker

    worker = superqt_worker(fn, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    _live[worker] = _owner
    worker.errored.connect(lambda exc: _log_unexpected(exc))
    worker.warned.connect(lambda w: log.warning("%s", w[0]))
    worker.finished.connect(lambda: _live.pop(worker, None))
    _guard_windows()
    return worker


class _CloseGuard(QObject):
    """Event filter on main windows: once the window's own close handler accepts (napari may ask the user
    first), the window's tasks are cancelled and, with the unowned workers, waited for."""

    def eventFilter(self, window, event) -> bool:
        if event.type() != QEvent.Type.Close or not _live:
            return False
        window.event(event)  # the window's own handling (napari may ask the user, and cleans up) comes first
        if event.isAccepted():
            stop_workers(window)
        return True  # handled: Qt closes the window only if the event is accepted


_guard: _CloseGuard | None = None


def _guard_windows() -> None:
    global _guard
    app = QApplication.instance()
    if app is None:
        return
    if _guard is None:
        _guard = _CloseGuard(app)
    for widget in app.topLevelWidgets():
        if isinstance(widget, QMainWindow):
            widget.installEventFilter(_guard)  # installing again is a no-op (it only moves the filter first)


def _inside(window: QWidget, runner) -> bool:
    try:
        return window.isAncestorOf(runner)
    except RuntimeError:  # the runner's widget is already deleted
        return False


def stop_workers(window: QWidget, timeout_ms: int = CLOSE_TIMEOUT_MS) -> bool:
    """Cancel the tasks of the TaskRunners inside ``window``, then wait for them and for every unowned
    worker; True if none of them is left."""
    mine = [worker for worker, runner in list(_live.items()) if runner is None or _inside(window, runner)]
    for runner in {runner for worker, runner in list(_live.items()) if worker in mine and runner is not None}:
        runner.cancel()
    if not wait_for_workers(timeout_ms, mine):
        log.warning("Closing with %d background task(s) still running", sum(w in _live for w in mine))
        return False
    return True


def _log_unexpected(exc: BaseException) -> None:
    from ..errors import MedsegError

    if not isinstance(exc, MedsegError):  # expected failures carry their message; no traceback needed
        log.error("Background task failed", exc_info=(type(exc), exc, exc.__traceback__))


def wait_for_workers(timeout_ms: int = 60000, workers=None) -> bool:
    """Process events until every worker (or those of ``workers``) has finished and its signals are
    delivered; True if none is left."""
    from qtpy.QtCore import QCoreApplication, QElapsedTimer

    def left():
        return [w for w in _live if workers is None or w in workers]

    timer = QElapsedTimer()
    timer.start()
    while left() and timer.elapsed() < timeout_ms:
        QCoreApplication.processEvents()
        threading.Event().wait(0.01)
    return not left()


class _Bridge(QObject):
    progressed = Signal(int, int, str)
    warned = Signal(str)


class _WarningsTo(logging.Handler):
    """Passes WARNING and worse records to ``emit_text`` (a signal's emit: thread-safe)."""

    def __init__(self, emit_text: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.emit_text = emit_text

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != log.name:  # the runner's own error log is not a warning to show
            self.emit_text(record.getMessage())


class TaskRunner(QWidget):
    """A progress bar plus Cancel; ``run(fn, on_done)`` calls ``fn(progress=..., cancel=...)`` in a thread.
    ``busy_changed`` tells when a task starts (True) and when it has finished (False)."""

    busy_changed = Signal(bool)

    def __init__(self, notify: Callable[[str, str], None], parent=None):
        super().__init__(parent)
        self._notify = notify
        self._cancel_event = threading.Event()
        self._worker = None
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running operation (labels already drawn are kept)")
        self.cancel_button.clicked.connect(self.cancel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar, 1)
        layout.addWidget(self.cancel_button)
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._show_progress)
        self._bridge.warned.connect(lambda text: self._notify("warning", text))
        self._set_idle("Ready")

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _set_idle(self, text: str) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setFormat(text)
        self.cancel_button.setEnabled(False)

    def _show_progress(self, done: int, total: int, message: str) -> None:
        if total <= 0:
            self.bar.setRange(0, 0)  # busy indicator
        else:
            self.bar.setRange(0, total)
            self.bar.setValue(done)
        self.bar.setFormat(f"{message}  %p%" if total > 0 else message)

    def cancel(self) -> None:
        self._cancel_event.set()
        self.bar.setFormat("Cancelling...")

    def run(self, fn: Callable, on_done: Callable, message: str = "Working", on_finally: Callable | None = None) -> bool:
        """Start ``fn``; ``on_done(result)`` runs on the GUI thread. Returns False if already busy."""
        from ..errors import Cancelled, MedsegError

        if self.busy:
            self._notify("warning", "Still working on the previous request; wait or press Cancel.")
            return False
        self._cancel_event.clear()
        self._show_progress(0, 0, message)
        self.cancel_button.setEnabled(True)

        def job():
            core_log, handler = logging.getLogger("napari_medseg"), _WarningsTo(self._bridge.warned.emit)
            core_log.addHandler(handler)
            try:
                return fn(progress=self._bridge.progressed.emit, cancel=self._cancel_event.is_set)
            finally:
                core_log.removeHandler(handler)

        def errored(exc):
            if isinstance(exc, Cancelled):
                self._notify("info", str(exc))
            elif isinstance(exc, MedsegError):
                self._notify("error", str(exc))
            else:  # create_worker has logged the traceback
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                self._notify("error", f"Unexpected error: {detail}")

        def finished():
            self._worker = None
            self._set_idle("Ready")
            self.busy_changed.emit(False)
            if on_finally:
                on_finally()

        worker = create_worker(job, _owner=self)
        worker.returned.connect(on_done)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        self._worker = worker
        worker.start()
        self.busy_changed.emit(True)
        return True

    def wait(self, timeout_ms: int = 60000) -> None:
        """Block until the running task ends (tests and shutdown)."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        timer = QElapsedTimer()
        timer.start()
        while self._worker is not None and timer.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            threading.Event().wait(0.01)
