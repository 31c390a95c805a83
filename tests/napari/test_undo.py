"""Model masks in the labels layer's own history, "Undo last" that keeps manual edits, objects kept apart,
micro-sam's shortcuts whichever layer is active (a real viewer under Xvfb; masks written as a model's would be)."""
import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from napari_medseg._napari.layers import image_layer_data
from napari_medseg._napari.runner import wait_for_workers
from napari_medseg.io.image import Image

pytestmark = pytest.mark.gui
PLUGIN = "napari-medseg"


@pytest.fixture
def session(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    messages = []
    monkeypatch.setattr(widget, "_notify", lambda level, text: messages.append((level, text)))
    image = Image(np.linspace(0, 255, 64 * 64, dtype=np.float32).reshape(64, 64), (1.0, 1.0), (0.0, 0.0), np.eye(2))
    data, kwargs, _ = image_layer_data(image, name="photo")
    layer = viewer.add_image(data, **kwargs)
    yield viewer, widget, layer, messages
    assert wait_for_workers(60000)  # the device listing (imports torch) ends before the viewer closes


def mask(rows, cols, shape=(64, 64)):
    out = np.zeros(shape, bool)
    out[rows, cols] = True
    return out


def model_mask(widget, layer, m):
    """What a finished Segment task does with the model's mask."""
    widget._write_mask(layer, widget._image(layer), None, None, m, {"model": "test"})
    return widget.viewer.layers["photo labels"]


def test_model_mask_and_brush_stroke_interleave_in_the_layer_history(session):
    viewer, widget, layer, _ = session
    labels = model_mask(widget, layer, mask(slice(10, 30), slice(10, 30)))
    assert (labels.data == 1).sum() == 400
    with labels.block_history():  # one brush stroke, as napari records a drag
        labels.paint((40, 40), 5)
    stroke = labels.data == 5
    assert stroke.any()
    labels.undo()  # Ctrl+Z: the stroke first
    assert not (labels.data == 5).any() and (labels.data == 1).sum() == 400
    labels.undo()  # then the model's mask
    assert not labels.data.any()
    labels.redo()  # Ctrl+Shift+Z: the mask, then the stroke
    assert (labels.data == 1).sum() == 400 and not (labels.data == 5).any()
    labels.redo()
    np.testing.assert_array_equal(labels.data == 5, stroke)


def test_undo_last_reverts_only_the_model_voxels(session):
    viewer, widget, layer, messages = session
    labels = model_mask(widget, layer, mask(slice(10, 30), slice(10, 30)))
    labels.data_setitem((np.arange(12, 16), np.full(4, 20)), 7)  # a correction inside the mask
    labels.data_setitem((np.arange(40, 44), np.full(4, 5)), 1)  # the same object, painted by hand outside
    widget.undo_button.click()
    assert (labels.data[12:16, 20] == 7).all()
    assert (labels.data[40:44, 5] == 1).all()
    assert (labels.data == 1).sum() == 4 and (labels.data == 7).sum() == 4
    labels.undo()  # "Undo last" is itself one step of the history
    assert (labels.data[10:30, 10:30] != 0).all()


def test_an_overlapping_mask_keeps_the_other_object_unless_asked(session):
    viewer, widget, layer, messages = session
    labels = model_mask(widget, layer, mask(slice(10, 30), slice(10, 30)))
    model_mask(widget, layer, mask(slice(20, 40), slice(20, 40)))  # overlaps object 1 on 10 x 10 pixels
    assert (labels.data == 1).sum() == 400 and (labels.data == 2).sum() == 400 - 100
    widget.overwrite_check.setChecked(True)
    model_mask(widget, layer, mask(slice(25, 35), slice(5, 15)))
    assert (labels.data[25:35, 5:15] == 3).all()
    assert (labels.data == 1).sum() == 400 - 25
    widget.overwrite_check.setChecked(False)
    model_mask(widget, layer, labels.data == 1)  # all inside object 1
    assert messages[-1][0] == "info" and "Overwrite" in messages[-1][1]  # nothing free to fill: said so


def press(viewer, key, modifier=Qt.KeyboardModifier.NoModifier):
    canvas = viewer.window._qt_viewer.canvas.native
    QTest.keyClick(canvas, key, modifier)


@pytest.mark.parametrize("active", ["photo", "labels", "medseg boxes"])
def test_shortcuts_reach_the_widget_whichever_layer_is_active(session, active):
    """napari binds B (preserve labels, shapes to back), S (select) and C (auto-contrast) on its layers."""
    viewer, widget, layer, messages = session
    labels = viewer.add_labels(np.zeros((64, 64), np.uint16), name="labels")
    widget.draw_box()
    shapes = viewer.layers["medseg boxes"]
    shapes.add_rectangles(np.array([[5, 5], [5, 20], [20, 20], [20, 5]], float))
    widget.runner.wait(180000)  # the box's mask: B and S start nothing while a run is in flight
    shapes.mode = "pan_zoom"
    monkeypatched = []
    widget.segment_prompts = lambda: monkeypatched.append("S")  # bound at press time, not at binding time
    viewer.layers.selection.active = viewer.layers[active]
    press(viewer, Qt.Key.Key_B)
    assert viewer.layers.selection.active is shapes and shapes.mode == "add_rectangle"
    assert labels.preserve_labels is False
    viewer.layers.selection.active = viewer.layers[active]
    press(viewer, Qt.Key.Key_S)
    assert monkeypatched == ["S"] and shapes.mode == "add_rectangle"
    contrast = tuple(layer.contrast_limits)
    press(viewer, Qt.Key.Key_C)
    assert messages[-1] == ("info", "Accepted: labels kept; the next object starts fresh.")
    assert tuple(layer.contrast_limits) == contrast and len(shapes.data) == 0
    shapes.add_rectangles(np.array([[5, 5], [5, 20], [20, 20], [20, 5]], float))
    press(viewer, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    assert len(shapes.data) == 0
    for button, key in ((widget.accept_button, "C"), (widget.clear_button, "Shift-C")):
        assert f"({key})" in button.toolTip()


def test_ctrl_z_while_drawing_prompts_undoes_the_mask(session):
    viewer, widget, layer, _ = session
    labels = model_mask(widget, layer, mask(slice(10, 30), slice(10, 30)))
    widget.draw_box()  # the boxes layer is active, as after a box was drawn
    press(viewer, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not labels.data.any()
    press(viewer, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert (labels.data == 1).sum() == 400
