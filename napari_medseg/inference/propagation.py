"""Carrying a slice mask through a volume, one slice at a time, in a way a user can steer.

`propagate_slices` yields each slice's mask as soon as it is known, so a caller that is cancelled keeps
what was done; it can start from any slice (a corrected one, after an earlier run) in one or both
directions. `PropagationPlan` counts the slices the run can still visit: the total starts at the
volume's edges and shrinks when a direction ends where the object does, so a progress bar ends at
100 % and its time estimate is an upper bound that tightens as the run goes.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import PromptError
from ..progress import Progress, format_duration

BOTH, UP, DOWN = (1, -1), (1,), (-1,)


class PropagationPlan:
    """The slices left to visit from ``start`` in ``directions`` of a volume of ``count`` slices."""

    def __init__(self, count: int, start: int, directions: Sequence[int] = BOTH, clock: Callable[[], float] = time.monotonic):
        if not 0 <= start < count:
            raise PromptError(f"Start slice {start} is outside the volume (0..{count - 1})")
        if not directions or any(d not in (1, -1) for d in directions):
            raise ValueError(f"directions must be a non-empty choice of 1 and -1, not {directions!r}")
        self.count, self.start, self.directions = count, start, tuple(directions)
        self.left = {d: (count - 1 - start if d == 1 else start) for d in self.directions}
        self.visited = 0
        self._clock = clock
        self._began = clock()

    @property
    def total(self) -> int:
        """Slices visited plus those that may still be visited (an upper bound until the run ends)."""
        return self.visited + sum(self.left.values())

    def visit(self, direction: int) -> None:
        self.visited += 1
        self.left[direction] -= 1

    def stop(self, direction: int) -> None:
        """The object ended in ``direction``: the slices beyond will not be visited."""
        self.left[direction] = 0

    def seconds_left(self) -> float | None:
        """Time per visited slice so far times the slices that may remain (None before the first)."""
        if not self.visited:
            return None
        return (self._clock() - self._began) / self.visited * sum(self.left.values())

    def message(self, index: int) -> str:
        text = f"Embedding slice {index} of {self.count}"
        left = self.seconds_left()
        return text if left is None else f"{text} (at most {format_duration(left)} left)"


def propagate_slices(predictor, slice_at: Callable[[int], np.ndarray], count: int, start: int, mask: np.ndarray, *,
                     directions: Sequence[int] = BOTH, display_range=None, min_area_fraction: float = 0.05,
                     min_pixels: int = 4, max_intensity_change: float = 0.5, box_margin: float | None = None,
                     zoom: str = "auto", progress=None, cancel=None, clock: Callable[[], float] = time.monotonic
                     ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(slice index, boolean mask)`` for each slice the object reaches from ``start``.

    ``predictor`` is a `BoxPredictor`; ``slice_at(i)`` returns slice ``i`` (only visited slices are asked
    for); ``display_range`` maps non-uint8 slices to the model's pixels (give one for the whole volume).
    Each slice is prompted with the bounding box of the previous slice's mask, grown by ``box_margin``
    pixels (default 3/256 of the longest side, as in LiteMedSAM's 3-D inference). A direction stops when
    the object is gone: the mask falls below ``min_area_fraction`` of the start area or ``min_pixels``,
    or its mean intensity moves from the start object's towards the surrounding background by more than
    ``max_intensity_change`` of their contrast (box models still outline something inside an empty box).
    Only that direction counts: a mask that stands out from the background more than the start object
    did (a bright object brighter on the next slice) is still the object.
    ``zoom`` prompts each slice whole or in a crop around the box, by `zoom.predict_box`'s policy ("auto":
    crops where a slice would be shrunk more than 2x to fit the model's input).
    The start slice itself is not yielded. Cancellation raises `Cancelled` between slices.
    """
    from .box2d import _box_region, _grown_box, to_uint8_rgb
    from .zoom import check_zoom, predict_box

    check_zoom(zoom)

    plan = PropagationPlan(count, start, directions, clock)
    first = slice_at(start)
    start_mask = np.asarray(mask, dtype=bool)
    if start_mask.shape != first.shape[:2]:
        raise PromptError(f"The start mask has shape {start_mask.shape}, slices have {first.shape[:2]}")
    if not start_mask.any():
        raise PromptError("The start mask is empty: draw or predict the object on the start slice first")
    margin = 3 / 256 * max(start_mask.shape) if box_margin is None else box_margin
    min_area = max(min_pixels, min_area_fraction * start_mask.sum())
    grey = to_uint8_rgb(first, display_range).mean(axis=2)
    ring = _box_region(start_mask, _grown_box(start_mask, 2 * margin + 2)) & ~start_mask
    object_level = grey[start_mask].mean()
    contrast = object_level - (grey[ring].mean() if ring.any() else object_level)
    tolerance = max_intensity_change * abs(contrast)
    towards_background = -np.sign(contrast)  # a change of level in this sign moves towards the background
    steps = Progress(plan.total, plan.message(start), progress=progress, cancel=cancel)
    for direction in plan.directions:
        previous, index = start_mask, start + direction
        while plan.left[direction]:
            steps.step(0, plan.message(index))
            pixels = slice_at(index)
            predicted = predict_box(predictor, pixels, _grown_box(previous, margin), zoom, display_range)
            level = to_uint8_rgb(pixels, display_range).mean(axis=2)[predicted].mean() if predicted.any() else None
            if predicted.sum() < min_area or (tolerance and (level - object_level) * towards_background > tolerance):
                plan.stop(direction)
                steps.total = plan.total
                break
            plan.visit(direction)
            steps.total = plan.total
            yield index, predicted
            previous, index = predicted, index + direction
            steps.step()
    steps.total = plan.total
    steps.step(0, f"Propagated through {plan.visited} slices")
