"""TaskRunner in a real viewer: each failure is reported once at the right level, and nothing re-raises."""
import logging
import sys
import threading

import pytest

from napari_medseg.errors import Cancelled, MedsegError

pytestmark = pytest.mark.gui


@pytest.fixture
def shown(make_napari_viewer, monkeypatch):
    """A viewer with a SegmentWidget-like notifier; records napari's notifications and any re-raise."""
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    notes = []
    notification_manager.notification_ready.connect(notes.append)
    reraised = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: reraised.append(exc))  # a re-raise on the GUI thread
    yield viewer, notes, reraised
    notification_manager.notification_ready.disconnect(notes.append)


def _notify(level, text):
    from napari.utils import notifications

    {"error": notifications.show_error, "warning": notifications.show_warning}.get(
        level, notifications.show_info)(text)


def _run(fn):
    from napari_medseg._napari.runner import TaskRunner, wait_for_workers

    runner = TaskRunner(_notify)
    done = []
    assert runner.run(fn, done.append)
    runner.wait(10000)
    assert not runner.busy and wait_for_workers(10000)
    return done


def _levels(notes):
    return [(str(n.severity), n.message) for n in notes]


def test_failing_task_notifies_once_as_error(shown, caplog):
    viewer, notes, reraised = shown

    def fn(progress, cancel):
        raise MedsegError("the model needs a 2-D image")

    _run(fn)
    assert _levels(notes) == [("error", "the model needs a 2-D image")]
    assert not reraised
    assert not [r for r in caplog.records if r.exc_info]  # an expected failure needs no traceback


def test_unexpected_exception_notifies_once_and_logs_traceback(shown, caplog):
    viewer, notes, reraised = shown

    def fn(progress, cancel):
        raise ZeroDivisionError("boom")

    with caplog.at_level(logging.ERROR, logger="napari_medseg._napari.runner"):
        _run(fn)
    assert _levels(notes) == [("error", "Unexpected error: ZeroDivisionError: boom")]
    assert not reraised
    (record,) = [r for r in caplog.records if r.exc_info]
    assert record.exc_info[0] is ZeroDivisionError


def test_cancelled_task_is_one_info_line(shown):
    viewer, notes, reraised = shown
    from napari_medseg._napari.runner import TaskRunner

    runner = TaskRunner(_notify)
    started = threading.Event()

    def fn(progress, cancel):
        started.set()
        while not cancel():
            threading.Event().wait(0.01)
        raise Cancelled("Cancelled: labels drawn so far are kept")

    runner.run(fn, lambda result: None)
    assert started.wait(10)
    runner.cancel_button.click()
    runner.wait(10000)
    assert _levels(notes) == [("info", "Cancelled: labels drawn so far are kept")]
    assert not reraised and not runner.busy


def test_tracked_worker_error_is_logged_not_raised(shown, caplog):
    """Workers outside a TaskRunner (the device listing) log their failure and are waited for."""
    from napari_medseg._napari import runner

    viewer, notes, reraised = shown
    worker = runner.create_worker(lambda: 1 / 0)
    worker.start()
    assert worker in runner._live
    assert runner.wait_for_workers(10000)
    assert not reraised and not notes
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ZeroDivisionError]


def test_task_failure_without_napari_error_hook_keeps_process(tmp_path):
    """A script with no napari hook: superqt's default re-raise aborted it (exit 134)."""
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(
        "from qtpy.QtWidgets import QApplication\n"
        "from napari_medseg._napari.runner import TaskRunner\n"
        "from napari_medseg.errors import Cancelled\n"
        "app = QApplication([])\n"
        "runner = TaskRunner(lambda level, text: print(level, text))\n"
        "def boom(progress, cancel): raise RuntimeError('boom')\n"
        "def stop(progress, cancel): raise Cancelled('stopped')\n"
        "for fn in (boom, stop):\n"
        "    runner.run(fn, print)\n"
        "    runner.wait(10000)\n"
        "print('alive')\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["error Unexpected error: RuntimeError: boom", "info stopped", "alive"]


def test_closing_the_viewer_cancels_its_tasks_and_waits_for_workers(make_napari_viewer):
    """A worker still running when its window closes would emit into deleted objects and abort the process."""
    from napari_medseg._napari import runner as runner_module
    from napari_medseg._napari.runner import TaskRunner

    viewer = make_napari_viewer()
    task_runner = TaskRunner(_notify)
    viewer.window.add_dock_widget(task_runner)
    started, saw_cancel = threading.Event(), []

    def endless(progress, cancel):
        started.set()
        for _ in range(3000):  # 30 s at most: the test fails, not hangs, if nobody cancels
            if cancel():
                saw_cancel.append(True)
                raise Cancelled("stopped")
            threading.Event().wait(0.01)

    assert task_runner.run(endless, lambda result: None)
    listing = runner_module.create_worker(threading.Event().wait, 0.5)  # an unowned worker, like the device listing
    listing.start()
    assert started.wait(10)
    viewer.close()
    assert saw_cancel == [True]
    assert listing not in runner_module._live and not runner_module._live


def test_script_closing_a_viewer_with_a_running_worker_exits_cleanly(tmp_path):
    import subprocess

    script = tmp_path / "script.py"
    script.write_text(
        "import threading, napari\n"
        "from napari_medseg._napari.runner import create_worker\n"
        "viewer = napari.Viewer(show=False)\n"
        "worker = create_worker(threading.Event().wait, 1.0)\n"
        "worker.returned.connect(lambda result: print('returned', result))\n"
        "worker.start()\n"
        "viewer.close()\n"
        "print('closed')\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["returned False", "closed"]


@pytest.mark.slow
def test_medseg_demo_screenshot_exits_0_every_time(tmp_path):
    """The README's demo command, as a user runs it on a machine without a desktop (issue 17: 2 of 3 aborted)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}  # demo starts its own Xvfb
    command = [sys.executable, "-c", "import sys; from napari_medseg.cli import main; sys.exit(main())", "demo"]
    for run in range(3):
        shot = tmp_path / f"demo{run}.png"
        result = subprocess.run([*command, "--screenshot", str(shot)], capture_output=True, text=True, env=env,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert shot.stat().st_size > 10000
