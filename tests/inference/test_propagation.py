"""The propagation planner: honest totals, time estimates, partial results on cancel, chosen directions."""
from types import SimpleNamespace

import numpy as np
import pytest

from napari_medseg.errors import Cancelled, PromptError
from napari_medseg.inference.propagation import DOWN, UP, PropagationPlan, propagate_slices


class ThresholdPredictor:
    """Stands in for BoxPredictor: the mask is the bright pixels inside the box."""

    profile = SimpleNamespace(size=256)  # a LiteMedSAM-sized input

    def set_image(self, pixels, display_range=None, key=None):
        self.pixels = pixels
        self.keys = [*getattr(self, "keys", []), key]

    def predict(self, box, points=None, point_labels=None):
        x0, y0, x1, y1 = np.asarray(box)
        rows, cols = np.mgrid[: self.pixels.shape[0], : self.pixels.shape[1]]
        inside = (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
        return inside & (self.pixels > 128)


@pytest.fixture
def volume():
    """40 slices of 32x32 uint8; a bright square on slices 10..24."""
    vol = np.full((40, 32, 32), 20, np.uint8)
    vol[10:25, 8:20, 8:20] = 200
    return vol


def run(volume, start, asked=None, **kwargs):
    def slice_at(i):
        if asked is not None:
            asked.append(i)
        return volume[i]

    return propagate_slices(ThresholdPredictor(), slice_at, len(volume), start, volume[start] > 128, **kwargs)


def test_the_total_shrinks_to_the_slices_really_visited(volume):
    reports, asked = [], []
    found = dict(run(volume, 15, asked, progress=lambda done, total, message: reports.append((done, total, message))))
    assert sorted(found) == [i for i in range(10, 25) if i != 15]
    assert reports[0][:2] == (0, 39)  # before anything is known: up to both edges
    done, total, _ = reports[-1]
    assert done == total == 14  # the bar ends full, at the slices visited
    totals = [t for _, t, _ in reports]
    assert totals == sorted(totals, reverse=True)  # only ever tightens
    assert set(asked) == set(range(9, 26))  # only the object and one slice past each end were read
    assert any("Embedding slice 16 of 40" in message for _, _, message in reports)


def test_cancel_keeps_the_slices_already_propagated(volume):
    found, calls = {}, []

    def cancel():
        calls.append(1)
        return len(found) >= 3

    with pytest.raises(Cancelled):
        for index, mask in run(volume, 12, cancel=cancel):
            found[index] = mask
    assert sorted(found) == [13, 14, 15] and all(m.any() for m in found.values())


def test_directions_and_restarting_from_any_slice(volume):
    assert sorted(dict(run(volume, 20, directions=UP))) == [21, 22, 23, 24]
    assert sorted(dict(run(volume, 20, directions=DOWN))) == list(range(10, 20))
    assert sorted(dict(run(volume, 24))) == list(range(10, 24))  # from the object's last slice
    assert dict(run(volume, 10, directions=DOWN)) == {}  # the object ends at once
    with pytest.raises(PromptError, match="empty"):
        dict(run(volume, 30))
    with pytest.raises(PromptError, match="outside"):
        dict(propagate_slices(ThresholdPredictor(), volume.__getitem__, 40, 40, volume[0] > 0))


def test_plan_estimates_time_from_the_slices_done():
    now = [100.0]
    plan = PropagationPlan(50, 10, clock=lambda: now[0])
    assert plan.total == 49 and plan.seconds_left() is None
    assert plan.message(11) == "Embedding slice 11 of 50"
    now[0] += 4.0
    plan.visit(1)
    plan.visit(1)  # 2 s per slice, 47 slices may remain
    assert plan.seconds_left() == pytest.approx(94.0)
    assert plan.message(13) == "Embedding slice 13 of 50 (at most 1 min 34 s left)"
    plan.stop(1)
    assert plan.total == 2 + 10 and plan.seconds_left() == pytest.approx(20.0)
    with pytest.raises(ValueError):
        PropagationPlan(5, 2, directions=(2,))


def test_only_a_change_towards_the_background_ends_the_object():
    """A tolerance of half the object/background contrast holds one way only: brighter than a bright
    start object is still the object; half-way to the background is not."""
    vol = np.full((30, 32, 32), 20, np.uint8)
    vol[5:25, 8:20, 8:20] = 150  # start object: 150 over 20, a tolerance of 65 grey levels
    vol[15:20, 8:20, 8:20] = 250  # 100 brighter: away from the background
    vol[22:25, 8:20, 8:20] = 140  # 10 darker: still the object
    vol[25:, 8:20, 8:20] = 135  # beyond: 15 darker again, still bright enough for the threshold
    vol[25:, 8:20, 8:20][::2] = 40  # but half its pixels near the background: the mean moves 67 towards it
    found = dict(run(vol, 10, max_intensity_change=0.5))
    assert sorted(found) == [i for i in range(5, 25) if i != 10]


@pytest.mark.parametrize("zoom", ["auto", "off"])
def test_propagation_prompts_crops_of_slices_larger_than_twice_the_model_input(zoom):
    """1,200 px slices seen by a 256 px model: "auto" embeds a crop around each slice's box (keyed by it),
    "off" the whole slice; the object found is the same."""
    volume = np.full((6, 1200, 1200), 20, np.uint8)
    volume[1:5, 600:630, 700:740] = 200
    predictor = ThresholdPredictor()
    found = dict(propagate_slices(predictor, volume.__getitem__, len(volume), 2, volume[2] > 128, zoom=zoom))
    assert sorted(found) == [1, 3, 4] and all((m == (volume[i] > 128)).all() for i, m in found.items())
    if zoom == "auto":
        assert predictor.pixels.shape == (256, 256)  # at least the model's input around a 30x40 box
        assert len(predictor.keys) == 5 and all(key[0] == "zoom" for key in predictor.keys)  # 3 found, 2 ends
    else:
        assert predictor.pixels.shape == (1200, 1200) and predictor.keys == [None] * 5
    with pytest.raises(PromptError, match="zoom must be one of"):
        dict(propagate_slices(predictor, volume.__getitem__, len(volume), 2, volume[2] > 128, zoom="yes"))
