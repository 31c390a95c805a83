"""A session that survives: recovery copies offered back, a question before closing with unsaved labels,
propagation a user can steer (cancel keeps, restart from a corrected slice after Accept, honest bar)."""
import numpy as np
import pytest
from qtpy.QtCore import QTimer
from qtpy.QtGui import QCloseEvent
from qtpy.QtWidgets import QApplication, QMessageBox

from napari_medseg._napari.layers import image_layer_data
from napari_medseg._napari.samples import sample_path
from napari_medseg.io import read_image
from napari_medseg.recovery import RecoveryStore

pytestmark = pytest.mark.gui
PLUGIN = "napari-medseg"


class UserClose(QCloseEvent):
    """A close event as the window manager sends it (the title bar's X, Ctrl+Q)."""

    def spontaneous(self):
        return True


def answer(button):
    """Press ``button`` of the modal question that is about to open; the list gets the question's text."""
    asked = []

    def press():
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            asked.append(box.text())
            box.button(button).click()
        else:
            QTimer.singleShot(20, press)

    QTimer.singleShot(20, press)
    return asked


@pytest.fixture
def recovery_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_RECOVERY", str(tmp_path / "recovery"))
    return tmp_path / "recovery"


def segment_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    return viewer, widget


def model_mask(widget, image_layer):
    """A mask through the path every model result takes (written, recorded, watched)."""
    mask = np.zeros(image_layer.data.shape[-2:], bool)
    mask[20:40, 30:60] = True
    widget._write_mask(image_layer, widget._image(image_layer), None, None, mask)
    return widget.viewer.layers[f"{image_layer.name} labels"]


def test_labels_are_copied_after_edits_and_offered_back_after_a_crash(make_napari_viewer, recovery_folder, qtbot):
    viewer, widget = segment_widget(make_napari_viewer)
    widget.recovery.timer.setInterval(300)
    viewer.open_sample(PLUGIN, "ct")
    image = viewer.layers[0]
    labels = model_mask(widget, image)
    store = RecoveryStore(recovery_folder)
    assert store.snapshots() == []  # debounced: nothing written while the user is still working
    qtbot.waitUntil(lambda: len(store.snapshots()) == 1, timeout=5000)
    labels.paint((60, 60), 5)  # a brush stroke after the model mask
    qtbot.waitUntil(lambda: (store.snapshots()[0].load()[0] == 5).any(), timeout=5000)
    painted = np.array(labels.data)

    # the first viewer "crashes" (is never closed by the user); a new session opens the same image
    viewer2, widget2 = segment_widget(make_napari_viewer)
    viewer2.open_sample(PLUGIN, "ct")
    qtbot.waitUntil(lambda: widget2.recovery.prompt is not None, timeout=5000)  # once the image is hashed
    prompt = widget2.recovery.prompt
    assert prompt is not None and prompt.isVisible() and "CT (pydicom CT_small) labels" in prompt.text()
    next(b for b in prompt.buttons() if b.text() == "Restore").click()
    restored = viewer2.layers["CT (pydicom CT_small) labels"]
    assert np.array_equal(restored.data, painted)
    np.testing.assert_allclose(restored.scale, image.scale)
    assert widget2.recovery.unsaved() == [restored]  # restored labels are still unsaved work

    viewer3, widget3 = segment_widget(make_napari_viewer)  # discarding removes the copies for good
    widget2.recovery.mark_saved(restored)
    labels.paint((61, 61), 6)  # the first session goes on working and writes a new copy
    widget.recovery.save_now()
    assert widget.recovery.wait()
    viewer3.open_sample(PLUGIN, "ct")
    qtbot.waitUntil(lambda: widget3.recovery.prompt is not None, timeout=5000)
    next(b for b in widget3.recovery.prompt.buttons() if b.text() == "Discard").click()
    assert store.snapshots() == []


def test_closing_with_unsaved_labels_asks_save_discard_cancel(make_napari_viewer, recovery_folder, tmp_path,
                                                              monkeypatch, qtbot):
    viewer, widget = segment_widget(make_napari_viewer)
    viewer.open_sample(PLUGIN, "ct")
    window = viewer.window._qt_window
    labels = model_mask(widget, viewer.layers[0])
    assert widget.recovery.wait()  # the image's hash
    widget.recovery.save_now()
    assert widget.recovery.wait()
    store = RecoveryStore(recovery_folder)
    assert len(store.snapshots()) == 1

    asked = answer(QMessageBox.StandardButton.Cancel)
    event = UserClose()
    QApplication.sendEvent(window, event)  # through the window's own event handling
    assert not event.isAccepted()  # napari's closeEvent would have accepted it
    assert asked == ["Save the labels before closing? Not saved yet: CT (pydicom CT_small) labels"]
    assert widget.recovery.unsaved() == [labels] and len(store.snapshots()) == 1

    target = tmp_path / "ct_labels.nii.gz"
    monkeypatch.setattr("napari_medseg._napari.recovery.QFileDialog.getSaveFileName",
                        lambda *args, **kwargs: (str(target), ""))
    asked = answer(QMessageBox.StandardButton.Save)
    assert widget.recovery.eventFilter(window, UserClose()) is False and asked  # the close may go on
    assert target.is_file() and np.array_equal(read_image(target).array, labels.data)
    assert widget.recovery.unsaved() == [] and store.snapshots() == []

    labels.paint((5, 5), 3)  # unsaved again; Discard closes and drops the copy
    widget.recovery.save_now()
    assert widget.recovery.wait()
    assert len(store.snapshots()) == 1
    asked = answer(QMessageBox.StandardButton.Discard)
    assert widget.recovery.eventFilter(window, UserClose()) is False and asked
    assert store.snapshots() == [] and widget.recovery.unsaved() == []
    assert widget.recovery.eventFilter(window, UserClose()) is False  # nothing unsaved: no question


def test_saving_through_the_plugin_writer_counts_as_saved(make_napari_viewer, recovery_folder, tmp_path):
    viewer, widget = segment_widget(make_napari_viewer)
    viewer.open_sample(PLUGIN, "ct")
    labels = model_mask(widget, viewer.layers[0])
    assert widget.recovery.wait()  # the image's hash
    widget.recovery.save_now()
    assert widget.recovery.wait()
    viewer.layers.selection.active = labels
    viewer.layers.save(str(tmp_path / "saved.nii.gz"), selected=True, plugin=PLUGIN)
    assert widget.recovery.unsaved() == [] and RecoveryStore(recovery_folder).snapshots() == []


def test_hashing_and_copies_run_off_the_gui_thread_and_failures_are_told_once(make_napari_viewer, recovery_folder,
                                                                             monkeypatch, qtbot):
    import threading

    import napari_medseg._napari.recovery as viewer_recovery

    threads = []

    def recording(function):
        def wrapper(*args, **kwargs):
            threads.append((function.__name__, threading.current_thread()))
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(viewer_recovery, "image_key", recording(viewer_recovery.image_key))
    monkeypatch.setattr(RecoveryStore, "save", recording(RecoveryStore.save))
    viewer, widget = segment_widget(make_napari_viewer)
    notes = []
    monkeypatch.setattr(widget.recovery, "_notify", lambda level, text: notes.append((level, text)))
    viewer.open_sample(PLUGIN, "ct")
    labels = model_mask(widget, viewer.layers[0])
    labels.paint((60, 60), 5)
    labels.metadata["medseg"]["label_names"] = {1: "vertebra"}
    assert widget.recovery.wait()  # the image's hash; then a copy
    widget.recovery.save_now()
    assert widget.recovery.wait()
    assert {name for name, _ in threads} == {"image_key", "save"}
    assert all(thread is not threading.main_thread() for _, thread in threads)
    (snapshot,) = RecoveryStore(recovery_folder).snapshots()
    data, header = snapshot.load()
    assert np.array_equal(data, labels.data) and (data == 5).any()
    assert header["name"] == labels.name and header["metadata"]["medseg"]["label_names"] == {"1": "vertebra"}

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RecoveryStore, "save", full_disk)
    for value in (6, 7):  # two failed copies, one warning
        labels.paint((61, 61), value)
        widget.recovery.save_now()
        assert widget.recovery.wait()
    assert notes == [("warning", f"Could not write the recovery copy of {labels.name}: [Errno 28] No space left "
                                 "on device")]
    assert widget.recovery.unsaved() == [labels]


# ---- propagation

def brain_slab(viewer):
    mr = read_image(sample_path("brain_mr"))
    small = mr.with_array(mr.array[84:96, ::2, ::2].copy())  # 12 axial slices of 1 mm, 2 mm pixels
    small.spacing = (mr.spacing[0] * 2, mr.spacing[1] * 2, mr.spacing[2])
    data, kwargs, _ = image_layer_data(small, name="brain")
    return viewer.add_image(data, **kwargs)


def show_slice(viewer, index):
    viewer.dims.set_point(0, viewer.layers["brain"].data_to_world((index, 0, 0))[0])


def draw_ventricles(viewer, widget):
    widget.draw_box()
    corners = [(6, 38, 35), (6, 38, 62), (6, 62, 62), (6, 62, 35)]
    viewer.layers["medseg boxes"].add_rectangles(np.array(corners, dtype=float))
    widget.runner.wait(180000)


@pytest.fixture
def slab(make_napari_viewer, recovery_folder):
    viewer, widget = segment_widget(make_napari_viewer)
    brain_slab(viewer)
    show_slice(viewer, 6)
    assert widget.precision_combo.currentText() == "faithful"
    reports, notes = [], []
    widget.runner._bridge.progressed.connect(lambda done, total, message: reports.append((done, total, message)))
    widget._notify = lambda level, text: notes.append((level, text))
    return viewer, widget, reports, notes


def object_slices(labels):
    return set(np.nonzero(labels.data.reshape(len(labels.data), -1).any(1))[0])


def test_first_use_says_what_is_slow_and_propagation_restarts_from_a_corrected_slice(slab):
    viewer, widget, reports, notes = slab
    draw_ventricles(viewer, widget)
    messages = [m for _, _, m in reports]
    assert "Loading LiteMedSAM" in messages and "Embedding slice 6 of 12" in messages
    assert messages.index("Loading LiteMedSAM") < messages.index("Embedding slice 6 of 12")
    labels = viewer.layers["brain labels"]

    reports.clear()
    widget.propagate()
    widget.runner.wait(300000)
    done, total, _ = reports[-1]
    assert done == total >= 2  # the bar ends full at the slices really visited
    assert any(m.startswith("Embedding slice 7 of 12") for _, _, m in reports)
    assert any("left)" in m for _, _, m in reports)  # a time estimate once a slice is done
    first = np.array(labels.data)
    reached = sorted(object_slices(labels))
    assert len(reached) >= 3 and 6 in reached

    widget.accept()  # the session goes on: correct a slice above the start and propagate again from it
    corrected = reached[-2]
    assert corrected > 6
    rows, cols = np.nonzero(first[corrected] == 1)
    keep = rows < np.median(rows)  # the user erases the lower half of the object on this slice
    labels.data_setitem((np.full(int((~keep).sum()), corrected), rows[~keep], cols[~keep]), 0)
    after_correction = np.array(labels.data)
    show_slice(viewer, corrected)
    widget.direction_combo.setCurrentText("higher slices")
    notes.clear()
    widget.propagate()
    widget.runner.wait(300000)
    assert not [n for n in notes if n[0] == "warning"], notes
    assert np.array_equal(labels.data[: corrected + 1], after_correction[: corrected + 1])  # below: untouched
    labels.undo()  # the new propagation is one step of the layer's own history
    assert np.array_equal(labels.data, after_correction)


def test_cancel_keeps_the_slices_already_propagated(slab):
    viewer, widget, reports, notes = slab
    draw_ventricles(viewer, widget)
    labels = viewer.layers["brain labels"]
    widget._edits.clear()  # as after Accept: propagation does not need the last model edit

    def cancel_after_two(done, total, message):
        if done >= 2:
            widget.runner.cancel()

    widget.runner._bridge.progressed.connect(cancel_after_two)
    widget.propagate()
    widget.runner.wait(300000)
    assert any("cancelled" in text for _, text in notes), notes
    assert len(object_slices(labels)) >= 3  # the start slice and the two done before Cancel
