"""A one-line terminal progress bar for CLI subcommands."""
from __future__ import annotations

import sys
import time


class TerminalProgress:
    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.monotonic()

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.stream.isatty() and done not in (0, total):
            return
        fraction = done / total if total else 0.0
        bar = "#" * int(fraction * self.width)
        elapsed = time.monotonic() - self.start
        eta = f" ETA {elapsed / fraction - elapsed:4.0f}s" if 0 < fraction < 1 else ""
        end = "\n" if total and done >= total else ""
        self.stream.write(f"\r{message[:40]:<40} [{bar:<{self.width}}] {done}/{total}{eta}{end}")
        self.stream.flush()
