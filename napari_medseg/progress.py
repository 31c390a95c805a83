"""Progress reporting and cancellation shared by every long core operation.

Core functions take ``progress: ProgressCallback | None`` and ``cancel: CancelCheck | None``.
The napari layer passes callbacks that drive ``napari.utils.progress`` and a cancel button; the
CLI passes a terminal progress bar.
"""
from __future__ import annotations

import math
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
    """A remaining or elapsed time as people read it: "45 s", "1 min 5 s", "2 min", "1 h 3 min".

    Rounded once at the precision shown, so a unit never reads 60 ("1 min 60 s" for 119.7 s)."""
    if not math.isfinite(seconds):
        return "unknown"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(round(whole / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
