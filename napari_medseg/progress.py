"""Progress reporting and cancellation shared by every long core operation.

Core functions take ``progress: ProgressCallback | None`` and ``cancel: CancelCheck | None``.
The napari layer passes callbacks that drive ``napari.utils.progress`` and a cancel button; the
CLI passes a terminal progress bar.
"""
from __future__ import annotations

from typing import Callable

from .errors import Cancelled

ProgressCallback = Callable[[int, int, str], None]  # (done, total, message)
CancelCheck = Callable[[], bool]  # True once the user asked to stop


class Progress:
    """Counts steps, reports them, and raises `Cancelled` between steps when asked to stop."""

    def __init__(self, total: int, message: str = "", progress: ProgressCallback | None = None,
                 cancel: CancelCheck | None = None):
        self.total, self.done, self.message = total, 0, message
        self._progress, self._cancel = progress, cancel
        self.check()
        self._report()

    def _report(self) -> None:
        if self._progress is not None:
            self._progress(self.done, self.total, self.message)

    def check(self) -> None:
        if self._cancel is not None and self._cancel():
            raise Cancelled(f"{self.message or 'Operation'} cancelled")

    def step(self, n: int = 1, message: str | None = None) -> None:
        self.done = min(self.total, self.done + n)
        if message is not None:
            self.message = message
        self._report()
        self.check()


def format_duration(seconds: float) -> str:
    """'45 s', '1 min 05 s', '2 h 03 min': rounded once, so no unit ever reads 60."""
    total = max(0, int(round(seconds)))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
