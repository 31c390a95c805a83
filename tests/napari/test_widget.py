"""The Segment widget in a real viewer: draw a box, get a mask, undo, propagate through a volume."""
import numpy as np
import pytest

from napari_medseg._napari.layers import image_layer_data
from napari_medseg._napari.samples import sample_path
from napari_medseg.io import read_image

pytestmark = pytest.mark.gui
PLUGIN = "napari-medseg"


@pytest.fixture
def viewer_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    return viewer, widget


def draw(viewer, widget, rows_cols_0, rows_cols_1):
    widget.draw_box()
    shapes = viewer.layers["medseg boxes"]
    shapes.add_rectangles(np.array([rows_cols_0, rows_cols_1], dtype=float))
    widget.runner.wait(180000)


def test_box_on_ct_gives_a_mask_and_undo_removes_it(viewer_widget):
    viewer, widget = viewer_widget
    viewer.open_sample(PLUGIN, "ct")
    assert widget.model_combo.currentData() == "lite-medsam"
    draw(viewer, widget, (20, 40), (70, 90))  # the vertebral body of pydicom's CT_small
    labels = viewer.layers["CT (pydicom CT_small) labels"]
    mask = labels.data == 1
    assert 200 < mask.sum() < 2500
    rows, cols = np.nonzero(mask)
    assert rows.min() >= 18 and rows.max() <= 72 and cols.min() >= 38 and cols.max() <= 92
    np.testing.assert_allclose(labels.scale, viewer.layers[0].scale)
    draw(viewer, widget, (80, 5), (120, 40))  # a second object gets the next label
    assert set(np.unique(labels.data)) == {0, 1, 2}
    widget.undo()
    assert set(np.unique(labels.data)) == {0, 1}
    widget.accept()
    assert len(viewer.layers["medseg boxes"].data) == 0


def test_prompts_without_image_warn(viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    messages = []
    monkeypatch.setattr(widget, "_notify", lambda level, text: messages.append((level, text)))
    widget.draw_box()
    widget.segment_prompts()
    assert messages and all(level == "warning" for level, _ in messages)
    assert "Open an image" in messages[0][1]


def test_box_on_volume_slice_and_propagate(viewer_widget):
    viewer, widget = viewer_widget
    mr = read_image(sample_path("brain_mr"))
    small = mr.with_array(mr.array[60:120:2, ::2, ::2].copy())
    small.spacing = tuple(s * 2 for s in mr.spacing)
    data, kwargs, _ = image_layer_data(small, name="brain")
    viewer.add_image(data, **kwargs)
    viewer.dims.set_point(0, viewer.layers["brain"].data_to_world((15, 0, 0))[0])
    # the lateral ventricles on an axial slice: dark, well-delimited
    draw(viewer, widget, (15, 38, 35), (15, 62, 62))
    labels = viewer.layers["brain labels"]
    assert labels.data[15].any() and not labels.data[14].any()
    widget.propagate()
    widget.runner.wait(300000)
    slices = np.nonzero(labels.data.reshape(len(labels.data), -1).any(1))[0]
    assert len(slices) >= 3 and 15 in slices
