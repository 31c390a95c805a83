"""Crash safety in the viewer: labels the plugin made are copied to the recovery folder a moment after each
change, offered back when their image is opened again, and a viewer with unsaved labels asks before closing.

The copies themselves are `napari_medseg.recovery` (Qt-free); this module only watches layers, runs the
debounce timer and shows the two questions. Hashing an image (the copies' folder) and writing the copies run
in background workers of the task runner (`runner.create_worker`): a large volume never freezes the viewer.
Copies are written one batch at a time, from a snapshot of the labels taken when the batch starts; a failure
is reported once until a copy is written again.
"""
from __future__ import annotations

import copy
import time
import weakref

import numpy as np

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QFileDialog, QMessageBox

from ..recovery import RecoveryStore, image_key

AUTOSAVE_MS = 2000
_controllers: "weakref.WeakSet[Recovery]" = weakref.WeakSet()


def _real(obj):
    """The object behind napari's public-only proxy (plugins get proxies; events carry the real layers)."""
    return getattr(obj, "__wrapped__", obj)


def note_saved(data) -> None:
    """Called by the plugin's writer: a watched layer whose array was just written is saved."""
    for controller in list(_controllers):
        controller.saved_data(data)


class Recovery(QObject):
    """One per Segment widget; ``watch(labels, image_layer)`` after the plugin writes into a labels layer.

    The viewer and its window are held weakly: as the window's event filter this object lives as long as
    the window does, and must not keep a closed viewer alive.
    """

    def __init__(self, viewer, store: RecoveryStore | None = None, delay_ms: int = AUTOSAVE_MS):
        super().__init__()
        self._viewer = weakref.ref(_real(viewer))
        self._window_ref = weakref.ref(_real(viewer.window._qt_window))
        self.store = store or RecoveryStore()
        self._watched: dict[int, tuple] = {}  # id(labels) -> (labels, image key)
        self._dirty: set[int] = set()  # changed since the last recovery copy
        self._unsaved: set[int] = set()  # changed since the last save to a file
        self._keys: dict[int, str] = {}  # id(image layer) -> content hash
        self._hashing: dict[int, list] = {}  # id(image layer) -> callbacks waiting for its hash
        self._workers: set = set()  # hashing and copying workers not finished yet
        self._saving = None  # the worker writing copies now
        self._save_again = False  # changes arrived while it wrote
        self._failing = False  # a failure was reported and nothing has succeeded since
        self._written: set = set()  # copies this session wrote (never offered back to itself)
        self.prompt: QMessageBox | None = None
        self._offered: tuple = ([], None)  # (snapshots, image layer) the prompt asks about
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(self.save_now)
        self._window.installEventFilter(self)
        viewer.layers.events.removed.connect(self._layer_removed)
        _controllers.add(self)

    @property
    def viewer(self):
        return self._viewer()

    @property
    def _window(self):
        ref = getattr(self, "_window_ref", None)  # events can arrive while Python tears the object down
        return ref() if ref is not None else None

    @staticmethod
    def _notify(level: str, message: str) -> None:
        from napari.utils import notifications

        (notifications.show_warning if level == "warning" else notifications.show_info)(message)

    def _report(self, message: str) -> None:
        """A failure, notified once until something succeeds again (a full disk would fail every 2 s)."""
        if not self._failing:
            self._failing = True
            self._notify("warning", message)

    def _start(self, fn, *args, returned=None, errored=None):
        from .runner import create_worker

        worker = create_worker(fn, *args)
        self._workers.add(worker)
        if returned is not None:
            worker.returned.connect(returned)
        if errored is not None:
            worker.errored.connect(errored)
        worker.finished.connect(lambda: self._workers.discard(worker))
        worker.start()
        return worker

    def wait(self, timeout_ms: int = 60000) -> bool:
        """Process events until the hashing and copying started so far (and what they start) are done."""
        from .runner import wait_for_workers

        deadline = time.monotonic() + timeout_ms / 1000
        while self._workers and time.monotonic() < deadline:
            wait_for_workers(int((deadline - time.monotonic()) * 1000), list(self._workers))
        return not self._workers

    # ---- watching ---------------------------------------------------------------------------
    def with_key(self, image_layer, then) -> None:
        """Call ``then(content hash of the image)`` on the GUI thread, hashing in a worker the first time."""
        image_layer = _real(image_layer)
        layer_id = id(image_layer)
        if layer_id in self._keys:
            return then(self._keys[layer_id])
        if layer_id in self._hashing:
            return self._hashing[layer_id].append(then)
        self._hashing[layer_id] = [then]
        name = image_layer.name

        def hashed(key):
            callbacks = self._hashing.pop(layer_id, None)
            if callbacks is None:  # the image layer was removed meanwhile
                return
            self._keys[layer_id] = key
            for callback in callbacks:
                callback(key)

        def failed(exc):
            self._hashing.pop(layer_id, None)
            self._report(f"Could not read {name} for its recovery copies: {exc}")

        self._start(image_key, image_layer.data, returned=hashed, errored=failed)

    def watch(self, labels, image_layer) -> None:
        """Keep recovery copies of ``labels`` (of ``image_layer``) from now on; counts as a change (the first
        copy waits for the image's hash)."""
        labels = _real(labels)
        if id(labels) not in self._watched:
            entry = self._watched[id(labels)] = [labels, None]
            for event in (labels.events.paint, labels.events.data, labels.events.labels_update):
                event.connect(self._layer_changed)  # a bound method: psygnal holds it weakly, the viewer can go

            def keyed(key):
                if self._watched.get(id(labels)) is entry:
                    entry[1] = key
                    if id(labels) in self._dirty:
                        self.timer.start()

            self.with_key(image_layer, keyed)
        self.changed(labels)

    def _layer_changed(self, event) -> None:
        self.changed(event.source)

    def changed(self, labels) -> None:
        labels = _real(labels)
        if id(labels) in self._watched:
            self._dirty.add(id(labels))
            self._unsaved.add(id(labels))
            self.timer.start()  # restarts: one copy after the edits pause

    def save_now(self) -> None:
        """Start writing a recovery copy of every watched layer changed since its last copy (in a worker, from
        a snapshot of the labels taken now; `wait` waits for it)."""
        self.timer.stop()
        if self._saving is not None:
            self._save_again = True
            return
        batch = []
        for layer_id in sorted(self._dirty):
            labels, key = self._watched[layer_id]
            if key is None:  # its image is still being hashed: copied when the hash is known
                continue
            batch.append((layer_id, key, labels.name, np.array(labels.data), tuple(labels.scale),
                          tuple(labels.translate), copy.deepcopy(labels.metadata)))
            self._dirty.discard(layer_id)
        if not batch:
            return
        names = ", ".join(item[2] for item in batch)

        def errored(exc):  # anything but the OSErrors _write_copies reports
            self._dirty.update(item[0] for item in batch)
            self._report(f"Could not write the recovery copy of {names}: {exc}")

        def finished():
            self._saving = None
            if self._save_again:
                self._save_again = False
                self.save_now()

        self._saving = self._start(self._write_copies, batch, returned=self._copies_written, errored=errored)
        self._saving.finished.connect(finished)

    def _write_copies(self, batch) -> tuple[list, list]:
        """In a worker: ([(layer id, key, name, path)] written, [(layer id, name, error)] failed)."""
        written, failed = [], []
        for layer_id, key, name, data, scale, translate, metadata in batch:
            try:
                path = self.store.save(key, name, data, scale=scale, translate=translate, metadata=metadata)
            except OSError as exc:
                failed.append((layer_id, name, exc))
                continue
            written.append((layer_id, key, name, path))
        return written, failed

    def _copies_written(self, result) -> None:
        written, failed = result
        for layer_id, key, name, path in written:
            self._written.add(path)
            if layer_id not in self._unsaved:  # saved to a file (or discarded) while the copy was written
                self.store.discard(key, name)
        for layer_id, _name, _exc in failed:
            self._dirty.add(layer_id)  # tried again after the next change
        if failed:
            layer_id, name, exc = failed[0]
            self._report(f"Could not write the recovery copy of {name}: {exc}")
        elif written:
            self._failing = False

    def unsaved(self) -> list:
        return [self._watched[i][0] for i in sorted(self._unsaved)]

    def mark_saved(self, labels) -> None:
        """``labels`` is in a file now: no prompt on close, and its recovery copy goes."""
        labels = _real(labels)
        layer_id = id(labels)
        if layer_id in self._watched:
            self._unsaved.discard(layer_id)
            self._dirty.discard(layer_id)
            key = self._watched[layer_id][1]
            if key is not None:  # None: still hashing, so no copy was written yet
                self.store.discard(key, labels.name)

    def saved_data(self, data) -> None:
        for labels, _ in list(self._watched.values()):
            if labels.data is _real(data):
                self.mark_saved(labels)

    def _layer_removed(self, event) -> None:
        layer = event.value
        if id(layer) in self._watched:  # deleted on purpose: nothing to recover
            self.mark_saved(layer)
            del self._watched[id(layer)]
        self._keys.pop(id(layer), None)
        self._hashing.pop(id(layer), None)

    # ---- offering copies back ---------------------------------------------------------------
    def offer(self, image_layer) -> None:
        """Ask (without blocking) whether to restore the copies left for ``image_layer``'s image, once its
        hash is known (`prompt` is the question then)."""
        from napari.layers import Image

        if isinstance(image_layer, Image):
            self.with_key(image_layer, lambda key: self._ask(image_layer, key))

    def _ask(self, image_layer, key: str) -> None:
        if self.viewer is None or image_layer not in self.viewer.layers:
            return
        snapshots = [s for s in self.store.snapshots(key) if s.path not in self._written]
        if not snapshots:
            return
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(snapshots[0].saved))
        names = ", ".join(s.name for s in snapshots)
        box = QMessageBox(QMessageBox.Icon.Question, "Recover labels",
                          f"Unsaved labels of \"{image_layer.name}\" were kept from an earlier session "
                          f"({when}): {names}.\nRestore them?", parent=self._window)
        box.addButton("Restore", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
        box.buttonClicked.connect(self._answered)
        box.setModal(False)
        self._offered = (snapshots, image_layer)
        box.show()
        self.prompt = box

    def _answered(self, button) -> None:
        snapshots, image_layer = self._offered
        self._offered = ([], None)
        if button.text() == "Restore":
            self.restore(snapshots, image_layer)
        else:
            self.discard(snapshots)

    def restore(self, snapshots, image_layer) -> list:
        from napari.layers import Labels

        layers = []
        for snapshot in snapshots:
            try:
                data, header = snapshot.load()
            except (OSError, ValueError, KeyError) as exc:
                self._notify("warning", f"Could not read the recovery copy {snapshot.path.name}: {exc}")
                continue
            kwargs = {k: header[k] for k in ("scale", "translate") if header.get(k)}
            layer = self.viewer.add_layer(Labels(data, name=header["name"], metadata=header["metadata"], **kwargs))
            self.store.discard(snapshot.image_key, snapshot.name)  # it lives on as the layer (and its copies)
            self.watch(layer, image_layer)
            layers.append(layer)
        if layers:
            self._notify("info", f"Restored {', '.join(layer.name for layer in layers)}")
        return layers

    def discard(self, snapshots) -> None:
        for snapshot in snapshots:
            self.store.discard(snapshot.image_key, snapshot.name)

    # ---- closing ----------------------------------------------------------------------------
    def eventFilter(self, watched, event) -> bool:
        if watched is self._window and event.type() == QEvent.Type.Close and event.spontaneous():
            if not self.confirm_close():
                event.ignore()
                return True
        return False

    def confirm_close(self) -> bool:
        """Save / Discard / Cancel for unsaved labels; True when the viewer may close."""
        unsaved = [layer for layer in self.unsaved() if layer in self.viewer.layers]
        if not unsaved:
            return True
        names = ", ".join(layer.name for layer in unsaved)
        answer = QMessageBox.question(
            self._window, "Unsaved labels", f"Save the labels before closing? Not saved yet: {names}",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save)
        if answer == QMessageBox.StandardButton.Cancel:
            return False
        if answer == QMessageBox.StandardButton.Discard:
            for layer in unsaved:
                self.mark_saved(layer)
            return True
        for layer in unsaved:
            path, _ = QFileDialog.getSaveFileName(self._window, f"Save {layer.name}", f"{layer.name}.nii.gz",
                                                  "Labels (*.nii.gz *.nii *.nrrd *.mha *.tif)")
            if not path:
                return False  # the user backed out of the file dialog: keep the viewer open
            layer.save(path, plugin="napari-medseg")
            self.mark_saved(layer)
        return True
