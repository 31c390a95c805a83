"""The Fine-tune widget in a real viewer: label, press the button, get a registered model that segments."""
import numpy as np
import pytest

from napari_medseg._napari.layers import image_layer_data, labels_layer_kwargs
from napari_medseg.models.registry import get_card

pytestmark = pytest.mark.gui
PLUGIN = "napari-medseg"


@pytest.fixture
def viewer_widgets(make_napari_viewer, mni):
    viewer = make_napari_viewer()
    _, segment_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    finetune = segment_widget.open_finetune()
    t1, _ = mni
    data, kwargs, _ = image_layer_data(t1, name="brain")
    viewer.add_image(data, **kwargs)
    return viewer, segment_widget, finetune


def test_label_press_fine_tune_and_segment_with_the_new_model(viewer_widgets, mni, tmp_path):
    from napari_medseg.segmentation import segment

    viewer, segment_widget, widget = viewer_widgets
    t1, labels = mni
    layer = viewer.add_labels(np.zeros(t1.array.shape, np.uint16), **labels_layer_kwargs(t1, "brain labels"))
    for z in (70, 85, 100, 115):  # the user corrects the white matter on four axial slices
        layer.data[z] = labels[z]
    layer.refresh()
    widget.open_project(tmp_path / "project")
    widget.image_combo.setCurrentText("brain")
    widget.labels_combo.setCurrentText("brain labels")
    assert "brain labels: 4 labelled slice" in widget.counts_label.text()
    assert widget.model_combo.currentData() == "lite-medsam"  # the Segment widget's model
    widget.budget_unit.setCurrentText("steps")
    widget.budget_spin.setValue(4)
    widget.batch_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    widget.name_edit.setText("wm-gui")

    widget.train_button.click()
    assert widget.running  # a separate process: the viewer keeps handling events meanwhile
    assert widget.wait(600) == 0, widget.status_label.text()

    assert "Registered wm-gui" in widget.status_label.text()
    assert widget.model_combo.currentData() == "wm-gui"
    assert segment_widget.model_combo.currentData() == "wm-gui"  # selected where the user segments
    assert widget.store.summary()["reviewed_slices"] == 4
    assert len(widget.dice_axes.lines) >= 1 and len(widget.loss_axes.lines) >= 0
    assert get_card("wm-gui").provenance["data"]["source"].startswith("annotation store")
    mask = segment(t1.array[92], "wm-gui", box=(30, 40, 170, 200))
    assert 500 < mask.sum() < 233 * 197 // 2


def test_saved_labels_come_back_when_the_image_is_opened_again(viewer_widgets, mni, tmp_path):
    from napari_medseg._napari.segment.objects import ObjectTable

    viewer, segment_widget, widget = viewer_widgets
    t1, labels = mni
    layer = viewer.add_labels(np.zeros(t1.array.shape, np.uint16), **labels_layer_kwargs(t1, "brain labels"))
    layer.data[90] = labels[90]
    value = int(labels[90].max())
    segment_widget.labels_combo.setCurrentText("brain labels")  # named, classed and coloured in the object list
    segment_widget.refresh_objects()
    segment_widget.rename_object(value, "grey matter")
    segment_widget.set_object_class(value, "tissue")
    segment_widget.recolor_object(value, (1.0, 0.0, 0.0, 1.0))
    widget.open_project(tmp_path / "project")
    widget.labels_combo.setCurrentText("brain labels")
    assert widget.save_labels()
    assert not widget.save_labels()  # unchanged: nothing written
    viewer.dims.set_point(0, viewer.layers["brain"].data_to_world((60, 0, 0))[0])
    widget.mark_reviewed()  # an empty slice the user checked: background to learn from
    assert widget.store.entries()[0].reviewed["slices"] == [60, 90]

    viewer.layers.clear()
    data, kwargs, _ = image_layer_data(t1, name="brain")
    viewer.add_image(data, **kwargs)
    restored = viewer.layers["brain labels"]
    np.testing.assert_array_equal(restored.data[90], labels[90])
    assert not restored.data[91].any()
    np.testing.assert_allclose(np.asarray(restored.colormap.map(value)).ravel(), [1, 0, 0, 1])
    segment_widget.labels_combo.setCurrentText("brain labels")
    segment_widget.refresh_objects()
    restored_object = ObjectTable.from_metadata(restored.metadata["medseg"]).objects[value]
    assert (restored_object.name, restored_object.category) == ("grey matter", "tissue")


def _poll_with(widget, tmp_path, **metrics):
    import json

    from napari_medseg._napari.finetune import TrainingRun

    widget.run = widget.run or TrainingRun(tmp_path, "wm-status", "digest")
    (tmp_path / "metrics.json").write_text(json.dumps({"history": [], "loss_steps": [], **metrics}))
    widget._poll()
    return widget.status_label.text(), widget.bar.format()


def test_status_says_starting_until_a_loss_exists_and_eta_reads_whole_units(viewer_widgets, tmp_path):
    _, _, widget = viewer_widgets
    status, bar = _poll_with(widget, tmp_path, status="training", steps=10, step=0, epochs=None, eta_s=119.7)
    assert status == "Training wm-status: starting…"  # was "loss nan"
    assert bar.endswith("ETA 2 min")  # was "1 min 60 s"
    status, bar = _poll_with(widget, tmp_path, status="training", steps=10, step=3, epoch=1, loss=0.25,
                             loss_steps=[[3, 0.25]], eta_s=3599.9)
    assert status == "Training wm-status: loss 0.2500" and bar == "epoch 1  %p%, ETA 1 h"


def test_fine_tune_dock_fits_1366x768_beside_the_segment_widget(make_napari_viewer):
    """Stacked, the two docks made the window at least 1383 px high: controls and plot were off-screen."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "ct")
    _, segment_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget = segment_widget.open_finetune()
    window = viewer.window._qt_window
    window.resize(1366, 768)
    for _ in range(10):
        QApplication.processEvents()
    assert (window.width(), window.height()) == (1366, 768)
    assert not widget.train_button.visibleRegion().isEmpty()  # the dock is shown, its button on screen
    # nothing wider than the dock: Cancel and the plot's right edge were behind a horizontal scroll bar
    assert widget.scroll_area.widget().width() <= widget.scroll_area.viewport().width()
    assert widget.cancel_button.visibleRegion().boundingRect().width() == widget.cancel_button.width()
    widget.scroll_area.ensureWidgetVisible(widget.canvas)
    QApplication.processEvents()
    assert not widget.canvas.visibleRegion().isEmpty()


def test_one_image_toast_says_validation_used_the_training_image(viewer_widgets, mni, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer, _, widget = viewer_widgets
    t1, labels = mni
    viewer.layers.clear()
    viewer.add_image(t1.array[92], name="slice")
    viewer.add_labels(labels[92].astype(np.uint16), name="slice labels")
    widget.open_project(tmp_path / "project")
    widget.image_combo.setCurrentText("slice")
    widget.labels_combo.setCurrentText("slice labels")
    widget.budget_unit.setCurrentText("steps")
    widget.budget_spin.setValue(1)
    widget.batch_spin.setValue(1)
    widget.device_combo.setCurrentText("cpu")
    widget.name_edit.setText("wm-one")
    notes = []
    notification_manager.notification_ready.connect(notes.append)
    try:
        widget.train_button.click()
        assert widget.wait(600) == 0, widget.status_label.text()
    finally:
        notification_manager.notification_ready.disconnect(notes.append)
    (message,) = [n.message for n in notes if n.message.startswith("New model wm-one")]
    assert "measured on the training image" in message
    assert get_card("wm-one").provenance["metrics"]["validation_on_training"] is True
