"""Crash safety in the viewer: labels the plugin made are copied to the recovery folder a moment after each
change, offered back when their image is opened again, and a viewer with unsaved labels asks before closing.

The copies themselves are `napari_medseg.recovery` (Qt-free); this module only watches layers, runs the
debounce timer and shows the two questions.
"""
from __future__ import annotations

import time
import weakref

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

    # ---- watching ---------------------------------------------------------------------------
    def key(self, image_layer) -> str:
        image_layer = _real(image_layer)
        if id(image_layer) not in self._keys:
            self._keys[id(image_layer)] = image_key(image_layer.data)
        return self._keys[id(image_layer)]

    def watch(self, labels, image_layer) -> None:
        """Keep recovery copies of ``labels`` (of ``image_layer``) from now on; counts as a change."""
        labels = _real(labels)
        if id(labels) not in self._watched:
            self._watched[id(labels)] = (labels, self.key(image_layer))
            for event in (labels.events.paint, labels.events.data, labels.events.labels_update):
                event.connect(self._layer_changed)  # a bound method: psygnal holds it weakly, the viewer can go
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
        """Write a recovery copy of every watched layer changed since its last copy."""
        self.timer.stop()
        for layer_id in sorted(self._dirty):
            labels, key = self._watched[layer_id]
            try:
                path = self.store.save(key, labels.name, labels.data, scale=labels.scale, translate=labels.translate,
                                       metadata=labels.metadata)
            except OSError as exc:
                self._notify("warning", f"Could not write the recovery copy of {labels.name}: {exc}")
                continue
            self._written.add(path)
            self._dirty.discard(layer_id)

    def unsaved(self) -> list:
        return [self._watched[i][0] for i in sorted(self._unsaved)]

    def mark_saved(self, labels) -> None:
        """``labels`` is in a file now: no prompt on close, and its recovery copy goes."""
        labels = _real(labels)
        layer_id = id(labels)
        if layer_id in self._watched:
            self._unsaved.discard(layer_id)
            self._dirty.discard(layer_id)
            self.store.discard(self._watched[layer_id][1], labels.name)

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

    # ---- offering copies back ---------------------------------------------------------------
    def offer(self, image_layer) -> QMessageBox | None:
        """Ask (without blocking) whether to restore the copies left for ``image_layer``'s image."""
        from napari.layers import Image

        if not isinstance(image_layer, Image):
            return None
        snapshots = [s for s in self.store.snapshots(self.key(image_layer)) if s.path not in self._written]
        if not snapshots:
            return None
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
        return box

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
