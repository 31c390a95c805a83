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
    viewer, _, widget = viewer_widgets
    t1, labels = mni
    layer = viewer.add_labels(np.zeros(t1.array.shape, np.uint16), **labels_layer_kwargs(t1, "brain labels"))
    layer.data[90] = labels[90]
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
