"""format_duration: one rounding at the shown precision, so no unit reads 60."""
import pytest

from napari_medseg.progress import format_duration


@pytest.mark.parametrize("seconds, text", [
    (0, "0 s"), (0.4, "0 s"), (44.6, "45 s"), (59.4, "59 s"), (59.6, "1 min"), (60, "1 min"), (65.2, "1 min 5 s"),
    (119.4, "1 min 59 s"), (119.7, "2 min"), (3599.4, "59 min 59 s"), (3599.9, "1 h"), (3660, "1 h 1 min"),
    (7199.9, "2 h"), (7170, "2 h"), (7169, "1 h 59 min"), (-3, "0 s"), (float("nan"), "unknown"),
    (float("inf"), "unknown"),
])
def test_format_duration_boundaries(seconds, text):
    assert format_duration(seconds) == text
