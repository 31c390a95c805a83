"""The Segment dock on a small screen (1366x768) and with missing weights, in a real viewer under Xvfb."""
import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication

from napari_medseg._napari.runner import wait_for_workers
from napari_medseg.models.registry import get_card, list_cards
from napari_medseg.models.weights import weight_status

pytestmark = pytest.mark.gui


@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.add_image(np.zeros((100, 800), np.float32), name="wide")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-medseg", "Segment")
    yield viewer, dock, widget
    assert wait_for_workers(60000)


def test_the_dock_scrolls_and_folds_and_the_view_is_refitted(dock, qtbot):
    viewer, dock_widget, widget = dock
    assert widget.minimumSizeHint().height() < 300  # the controls scroll instead of growing the window
    assert widget.scroll_area.widget().sizeHint().height() > widget.minimumSizeHint().height()
    objects = widget.groups["Objects"]
    objects.collapse(animate=False)
    assert not objects.isExpanded()
    # the wide image fills the canvas that the dock left, not the window it had before the dock opened
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(lambda: abs(viewer.camera.zoom * 800 - canvas.width() * 0.95) < 0.1 * canvas.width(), timeout=5000)


def test_missing_weights_link_copy_and_disabled_run(dock):
    viewer, _, widget = dock
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("swin-smt"))
    label = widget.model_status
    assert label.openExternalLinks()
    assert label.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse
    assert '<a href="https://github.com/MI2DataLab/SwinSMT"' in label.text()
    assert not widget.automatic_button.isEnabled()
    assert "weights missing" in widget.automatic_button.toolTip()
    widget.copy_hint_button.click()
    copied = QApplication.clipboard().text()
    assert "publish no trained weights" in copied and "medseg models install swin-smt" in copied
    widget.model_combo.setCurrentIndex(widget.model_combo.findData("lite-medsam"))  # bundled
    assert widget.segment_button.isEnabled() and widget.box_button.isEnabled()
    assert not widget.copy_hint_button.isVisibleTo(widget)


def test_every_missing_weights_hint_names_a_real_source():
    cards = {card.id: card for card in list_cards()}
    for model in ("swin-smt", "vm-unet-isic", "vm-unet-synapse"):  # their repositories publish code only
        assert "publish no trained weights" in weight_status(cards[model]).detail
    folder = get_card("swin-umamba").weight.url
    variants = {m: cards[f"swin-umamba-{m}"] for m in ("abdomenmr", "endoscopy", "microscopy")}
    assert len({card.weight.file for card in variants.values()}) == 3
    for name, card in variants.items():
        hint = weight_status(card).detail
        assert card.weight.url == folder and card.family == "swin_umamba"
        assert f"the {card.name.split('(')[1].split(',')[0]} checkpoint" in hint and f"install {card.id}" in hint


def test_shortcuts_obey_the_run_buttons(dock, qtbot):
    """S and B, pressed on the canvas, do nothing but say why while their buttons are disabled."""
    import threading

    viewer, _, widget = dock
    canvas = viewer.window._qt_viewer.canvas.native
    pressed, notes = [], []
    for action in ("segment_prompts", "draw_box"):
        setattr(widget, action, lambda action=action: pressed.append(action))
    widget._notify = lambda level, text: notes.append((level, text))

    def press(key):
        canvas.setFocus()
        qtbot.keyClick(canvas, key)

    widget.model_combo.setCurrentIndex(widget.model_combo.findData("medsam"))  # weights missing
    press(Qt.Key.Key_S)
    press(Qt.Key.Key_B)
    assert pressed == [] and len(notes) == 2 and all("weights missing" in text for _, text in notes)

    widget.model_combo.setCurrentIndex(widget.model_combo.findData("lite-medsam"))  # bundled
    release = threading.Event()
    widget.runner.run(lambda progress, cancel: release.wait(30), lambda _: None, "Busy")
    assert not widget.segment_button.isEnabled() and not widget.box_button.isEnabled()
    notes.clear()
    press(Qt.Key.Key_S)
    press(Qt.Key.Key_B)
    assert pressed == [] and [level for level, _ in notes] == ["warning", "warning"]
    assert all("Still working" in text for _, text in notes)
    release.set()
    widget.runner.wait(30000)
    assert widget.segment_button.isEnabled() and widget.box_button.isEnabled()
    press(Qt.Key.Key_B)
    press(Qt.Key.Key_S)
    assert pressed == ["draw_box", "segment_prompts"]
