"""The Segment widget's "Server..." device in a real viewer, against a loopback server."""
import stat

import numpy as np
import pytest

from napari_medseg._napari.segment.server_picker import SERVER_ITEM, settings_path

from .conftest import TOKEN, volume

pytestmark = pytest.mark.gui
PLUGIN = "napari-medseg"


def draw(viewer, widget, start, end):
    widget.draw_box()
    *lead, r0, c0 = start
    *_, r1, c1 = end
    corners = [(*lead, r0, c0), (*lead, r0, c1), (*lead, r1, c1), (*lead, r1, c0)]
    viewer.layers["medseg boxes"].add_rectangles(np.array(corners, dtype=float))
    widget.runner.wait(180000)


def test_segment_widget_through_a_server(make_napari_viewer, live_server, monkeypatch):
    url, app = live_server
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    messages = []
    monkeypatch.setattr(widget, "_notify", lambda level, text: messages.append((level, text)))
    widget.server_picker._notify = widget._notify
    combo = widget.device_combo
    assert combo.findText(SERVER_ITEM) >= 0
    assert not widget.server_picker.connect_to(url, "wrong")
    assert messages[-1][0] == "error" and "refused the token" in messages[-1][1]
    assert combo.currentText() == "auto"
    assert widget.server_picker.connect_to(url, TOKEN)
    assert combo.currentText() == f"server: {url}"
    assert stat.S_IMODE(settings_path().stat().st_mode) == 0o600

    viewer.add_image(volume(), name="ct")
    viewer.dims.set_point(0, 2)
    sessions_before = app.state.sessions.all()
    draw(viewer, widget, (2, 18, 14), (2, 46, 52))
    labels = viewer.layers["ct labels"]
    remote = labels.data == 1
    assert remote[2].any() and not remote[[0, 1, 3]].any()
    assert len(app.state.sessions.all()) == len(sessions_before) + 1  # the image went to the server
    widget.undo()
    combo.setCurrentText("cpu")
    draw(viewer, widget, (2, 18, 14), (2, 46, 52))
    assert np.array_equal(labels.data == 1, remote)  # the same mask as computed here

    again = make_napari_viewer()
    _, second = again.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert second.device_combo.findText(f"server: {url}") >= 0  # remembered
