"""The Segment widget's object list in a real viewer: rename, class, recolour, delete (one undo step),
select to edit, and names saved with the labels."""
import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox

from napari_medseg._napari.layers import image_layer_data
from napari_medseg._napari.runner import wait_for_workers
from napari_medseg._napari.segment.object_list import CLASS, NAME
from napari_medseg._napari.segment.objects import ObjectTable
from napari_medseg.io import read_image
from napari_medseg.io.image import Image

pytestmark = pytest.mark.gui


@pytest.fixture
def two_objects(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medseg", "Segment")
    image = Image(np.zeros((48, 48), np.float32), (0.5, 0.5), (0.0, 0.0), np.eye(2), modality="CT")
    data, kwargs, _ = image_layer_data(image, name="scan")
    layer = viewer.add_image(data, **kwargs)
    for rows, cols in ((slice(2, 12), slice(2, 12)), (slice(20, 30), slice(20, 40))):
        mask = np.zeros((48, 48), bool)
        mask[rows, cols] = True
        widget._write_mask(layer, widget._image(layer), None, None, mask)
    labels = viewer.layers["scan labels"]
    qtbot.waitUntil(lambda: widget.object_list.table.rowCount() == 2, timeout=5000)
    yield viewer, widget, labels
    assert wait_for_workers(60000)


def test_objects_are_listed_renamed_classed_and_saved(two_objects, tmp_path):
    viewer, widget, labels = two_objects
    table = widget.object_list.table
    assert [table.item(r, 1).text() for r in range(2)] == ["1", "2"]
    assert [table.item(r, NAME).text() for r in range(2)] == ["object 1", "object 2"]
    table.item(0, NAME).setText("left kidney")  # what an edit in the cell does
    table.item(1, CLASS).setText("cyst")  # what the class editor writes back
    objects = ObjectTable.from_metadata(labels.metadata["medseg"]).objects
    assert objects[1].name == "left kidney" and objects[2].category == "cyst"
    table.item(1, NAME).setText("  ")  # an empty name is refused, the old one shown again
    assert table.item(1, NAME).text() == "object 2"
    path = tmp_path / "labels.nii.gz"
    labels.save(str(path), plugin="napari-medseg")
    assert read_image(path).metadata["label_names"] == {1: "left kidney", 2: "object 2"}


def test_recolour_delete_and_select(two_objects, qtbot):
    viewer, widget, labels = two_objects
    before = np.asarray(labels.colormap.map(2)).ravel()
    widget.recolor_object(1, (1.0, 0.0, 0.0, 1.0))
    np.testing.assert_allclose(np.asarray(labels.colormap.map(1)).ravel(), [1, 0, 0, 1])
    np.testing.assert_allclose(np.asarray(labels.colormap.map(2)).ravel(), before)  # the other keeps its colour
    swatch = widget.object_list.table.item(0, 0).data(Qt.ItemDataRole.DecorationRole)
    assert (swatch.red(), swatch.green(), swatch.blue()) == (255, 0, 0)

    assert labels.selected_label == 2  # the newest object, selected in the list too
    widget.object_list.table.selectRow(0)  # select to edit: paint with that object
    assert labels.selected_label == 1 and viewer.layers.selection.active is labels
    widget.object_list.table.selectRow(1)
    widget.object_list.delete_button.click()
    assert not (labels.data == 2).any() and (labels.data == 1).sum() == 100
    qtbot.waitUntil(lambda: widget.object_list.table.rowCount() == 1, timeout=5000)
    labels.undo()  # the delete was one step
    assert (labels.data == 2).sum() == 200
    qtbot.waitUntil(lambda: widget.object_list.table.rowCount() == 2, timeout=5000)
    assert widget.object_list.table.item(1, NAME).text() == "object 2"


def test_class_choices_come_from_the_model(two_objects, qtbot):
    viewer, widget, labels = two_objects
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("vm-unet-synapse"))
    table = widget.object_list.table
    table.editItem(table.item(0, CLASS))  # a double-click on the class cell
    editor = table.findChild(QComboBox)
    choices = [editor.itemText(i) for i in range(editor.count())]
    assert "liver" in choices and "background" not in choices
    editor.setCurrentText("left kidney")
    table.commitData(editor)  # what Enter or leaving the editor does
    assert table.item(0, CLASS).text() == "left kidney"
    assert ObjectTable.from_metadata(labels.metadata["medseg"]).objects[1].category == "left kidney"


def test_slice_changes_do_not_rescan_but_undo_does(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medseg", "Segment")
    labels = viewer.add_labels(np.zeros((6, 16, 16), np.uint16), name="volume labels")
    widget.labels_combo.setCurrentText("volume labels")
    labels.data_setitem((np.full(4, 2), np.arange(4), np.arange(4)), 1)
    widget._objects_timer.stop()
    widget.refresh_objects()
    for index in range(6):  # every slice change emits set_data, as undo does
        viewer.dims.set_point(0, index)
        assert not widget._objects_timer.isActive()
    labels.undo()
    assert widget._objects_timer.isActive()
    widget._objects_timer.stop()
    widget.refresh_objects()
    assert widget.object_list.table.rowCount() == 0
    assert wait_for_workers(60000)


@pytest.mark.parametrize("suffix", [".nii.gz", ".tif"])
def test_classes_and_colours_are_saved_and_read_back_into_the_list(two_objects, tmp_path, qtbot, suffix):
    from napari.layers import Labels

    from napari_medseg._napari.layers import labels_layer_data

    viewer, widget, labels = two_objects
    widget.rename_object(1, "left kidney")
    widget.set_object_class(1, "organ")
    widget.set_object_class(2, "cyst")
    widget.recolor_object(2, (0.0, 1.0, 0.0, 1.0))
    shown = tuple(round(float(c) * 255) for c in np.asarray(labels.colormap.map(1)).ravel()[:3])
    path = tmp_path / f"labels{suffix}"
    labels.save(str(path), plugin="napari-medseg")
    metadata = read_image(path).metadata
    assert metadata["label_classes"] == {1: "organ", 2: "cyst"}
    assert metadata["label_colors"] == {1: shown, 2: (0, 255, 0)}

    data, kwargs, _ = labels_layer_data(read_image(path))
    reopened = viewer.add_layer(Labels(data, **kwargs))
    widget.labels_combo.setCurrentText(reopened.name)
    table = widget.object_list.table
    qtbot.waitUntil(lambda: table.rowCount() == 2 and table.item(0, NAME).text() == "left kidney", timeout=5000)
    assert [table.item(r, CLASS).text() for r in range(2)] == ["organ", "cyst"]
    swatches = [table.item(r, 0).data(Qt.ItemDataRole.DecorationRole) for r in range(2)]
    assert [(s.red(), s.green(), s.blue()) for s in swatches] == [shown, (0, 255, 0)]
