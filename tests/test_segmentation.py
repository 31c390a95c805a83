from types import SimpleNamespace

import numpy as np
import pytest

from napari_medseg.errors import PromptError
from napari_medseg.segmentation import segment


@pytest.mark.parametrize("label", [0, -1, 2**32, 1.5, True, np.nan])
def test_label_values_a_label_map_cannot_hold_are_refused_before_loading(label):
    with pytest.raises(PromptError, match="label must be a whole number from 1 to 4294967295"):
        segment(np.zeros((8, 8), np.float32), "no-such-model", box=(1, 1, 5, 5), label=label)



class BoxAsMask:
    """A box predictor whose mask is the box itself (what segment() does with the value is tested)."""

    profile = SimpleNamespace(size=256)  # a LiteMedSAM-sized input

    def __init__(self, loaded, device=None, precision="faithful"):
        pass

    def set_image(self, pixels):
        self.shape = pixels.shape[:2]

    def predict(self, box=None, points=None, point_labels=None):
        mask = np.zeros(self.shape, bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        mask[y0:y1, x0:x1] = True
        return mask


def test_a_label_above_65535_gets_a_type_that_holds_it(monkeypatch):
    from napari_medseg.inference import box2d
    from napari_medseg.models.loaded import LoadedModel

    monkeypatch.setattr(box2d, "BoxPredictor", BoxAsMask)
    labels = segment(np.zeros((64, 64), np.float32), LoadedModel(None, "sam", "box2d"), box=(15, 15, 45, 45),
                     label=70000)
    assert labels.dtype == np.uint32 and set(np.unique(labels).tolist()) == {0, 70000}
