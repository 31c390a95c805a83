"""`medseg demo`: napari with the Segment widget docked and a sample image loaded.

With no display (a server, CI), it starts a virtual X display (Xvfb), saves a screenshot of the real
window and exits; install Xvfb with ``apt-get install xvfb``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from ..errors import MedsegError

SAMPLES = ("ct", "head_ct", "brain_mr", "fundus", "microscopy")


def add_arguments(parser) -> None:
    parser.add_argument("--sample", choices=SAMPLES, default="ct", help="sample image to open (default: ct)")
    parser.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window and exit")
    parser.add_argument("--box", help="x0,y0,x1,y1: draw this box on the sample and segment it (with --screenshot)")


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _start_xvfb() -> subprocess.Popen:
    if shutil.which("Xvfb") is None:
        raise MedsegError("No display found and Xvfb is not installed: run 'apt-get install xvfb' "
                          "(or use a desktop session), then 'medseg demo' again")
    display = f":{100 + os.getpid() % 800}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise MedsegError(f"Xvfb could not start on display {display}")
    os.environ["DISPLAY"] = display
    return proc


def open_viewer(sample: str = "ct", show: bool = True):
    """A napari viewer with the sample and the docked Segment widget (also used by the GUI tests)."""
    import napari

    viewer = napari.Viewer(title="napari-medseg demo", show=show)
    viewer.open_sample("napari-medseg", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medseg", "Segment")
    return viewer, widget


def close_viewer(viewer, timeout_ms: int = 120000) -> None:
    """Close after our background workers (the device listing imports torch) have finished: a worker
    thread that outlives the viewer, or delivers a signal to its deleted widgets, aborts the process."""
    from .._napari.runner import wait_for_workers

    if not wait_for_workers(timeout_ms):
        print("warning: background tasks still running; closing anyway", file=sys.stderr)
    viewer.close()


def run(args) -> int:
    xvfb = None
    screenshot = args.screenshot
    if not _has_display():
        xvfb = _start_xvfb()
        screenshot = screenshot or "medseg-demo.png"
        print(f"No display found: running napari on a virtual display (Xvfb); the window is saved to {screenshot}")
    try:
        import napari

        viewer, widget = open_viewer(args.sample)
        viewer.window._qt_window.resize(1500, 950)
        if args.box:
            _segment_box(viewer, widget, [float(v) for v in args.box.split(",")])
        if screenshot:
            from qtpy.QtWidgets import QApplication

            for _ in range(20):
                QApplication.processEvents()
                time.sleep(0.05)
            viewer.screenshot(screenshot, canvas_only=False)
            print(f"saved {screenshot}")
            close_viewer(viewer)
            return 0
        napari.run()
        return 0
    finally:
        if xvfb is not None:
            xvfb.terminate()


def _segment_box(viewer, widget, box: list[float]) -> None:
    """Draw a rectangle as a user would and wait for the mask (scripted demo and screenshots)."""
    import numpy as np

    if len(box) != 4:
        raise MedsegError("--box takes x0,y0,x1,y1")
    x0, y0, x1, y1 = box
    widget.draw_box()
    shapes = viewer.layers["medseg boxes"]
    lead = [] if shapes.ndim == 2 else [viewer.layers[0].world_to_data(viewer.dims.point)[0]]
    corners = [(*lead, y0, x0), (*lead, y0, x1), (*lead, y1, x1), (*lead, y1, x0)]
    shapes.add_rectangles(np.array(corners, dtype=float))
    widget.runner.wait(120000)
