"""The Fine-tune dock's layer glue: which image and labels layers to keep, the annotation store they are
saved into (auto-save, reviewed slices, counts) and labels put back when an image is opened again."""
from __future__ import annotations

import hashlib

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from ..errors import MedsegError
from .combos import fill_combo
from .finetune_gui import FinetuneGui
from .layers import META_KEY, label_colormap, labels_layer_kwargs, reference_image


def layer_image(layer):
    """The `Image` (with geometry, modality, intensity) behind a napari image layer."""
    image = reference_image(np.asarray(layer.data), layer.metadata, {
        "scale": layer.scale, "translate": layer.translate, "affine": layer.affine.affine_matrix})
    info = layer.metadata.get(META_KEY, {})
    image.modality = info.get("modality", image.modality)
    image.intensity = "rgb" if layer.rgb else info.get("intensity", "raw")
    if layer.rgb:
        image = image.with_array(np.asarray(layer.data), channel_axis=-1, intensity="rgb")
    return image


def _digest(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8).reshape(-1), digest_size=16).hexdigest()


def _dock_of(widget):
    """The QDockWidget holding ``widget``, or None."""
    from qtpy.QtWidgets import QDockWidget

    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


class FinetuneControls(FinetuneGui):
    """The layout connected to the viewer's layers and to an annotation store."""

    def __init__(self, napari_viewer, trainable_cards):
        super().__init__(trainable_cards)
        self.viewer = napari_viewer
        self.store = None
        self._placed = False  # docked beside the Segment widget once, when first shown
        self._saved: dict[str, str] = {}  # labels layer name -> digest of what was last saved
        self._prompts_saved: dict[str, int] = {}  # labels layer name -> prompts already stored
        self._reviewed: dict[str, set[int]] = {}  # labels layer name -> slices marked reviewed
        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave)
        self._autosave_changed()
        self.project_button.clicked.connect(self.choose_project)
        self.save_button.clicked.connect(lambda: self.save_labels(notify=True))
        self.reviewed_button.clicked.connect(self.mark_reviewed)
        self.autosave_check.toggled.connect(self._autosave_changed)
        self.autosave_spin.valueChanged.connect(self._autosave_changed)
        self.labels_combo.currentTextChanged.connect(lambda *_: self.refresh_counts())

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._placed:
            self._placed = True
            QTimer.singleShot(0, self._share_dock_with_segment)

    def _share_dock_with_segment(self) -> None:
        """Dock as a tab beside a docked Segment widget: the two stacked need about 1,400 px of height, so
        on a 1366x768 or 1080p screen the controls and the plot would be squeezed out of sight."""
        from .segment.main import SegmentWidget

        mine = _dock_of(self)
        if mine is None or mine.isFloating():
            return
        window = mine.parentWidget()
        for widget in getattr(self.viewer.window, "dock_widgets", {}).values():
            other = _dock_of(widget) if isinstance(widget, SegmentWidget) else None
            if other is not None and not other.isFloating() and \
                    window.dockWidgetArea(other) == window.dockWidgetArea(mine):
                window.tabifyDockWidget(other, mine)
                mine.show()
                mine.raise_()
                return

    def _notify(self, level: str, message: str) -> None:
        from napari.utils import notifications

        {"error": notifications.show_error, "warning": notifications.show_warning}.get(
            level, notifications.show_info)(message)

    # ---- layers -----------------------------------------------------------------------------
    def _layers(self, kind):
        from napari.layers import Image, Labels

        cls = Image if kind == "image" else Labels
        return [layer for layer in self.viewer.layers if isinstance(layer, cls)]

    def _refresh_layers(self, *_):
        fill_combo(self.image_combo, [layer.name for layer in self._layers("image")])
        fill_combo(self.labels_combo, [layer.name for layer in self._layers("labels")])
        self.refresh_counts()

    def _layer_inserted(self, event):
        from napari.layers import Image

        self._refresh_layers()
        if self.store is not None and isinstance(event.value, Image):
            self.restore_labels(event.value)

    def _selected(self):
        image_name, labels_name = self.image_combo.currentText(), self.labels_combo.currentText()
        if image_name not in self.viewer.layers or labels_name not in self.viewer.layers:
            raise MedsegError("Open an image and a labels layer (draw or segment something) first")
        image_layer, labels_layer = self.viewer.layers[image_name], self.viewer.layers[labels_name]
        image = layer_image(image_layer)
        if labels_layer.data.shape != image.spatial_shape:
            raise MedsegError(f"Labels {labels_layer.name!r} do not have the shape of image {image_layer.name!r}")
        return image_layer, labels_layer, image

    # ---- annotation store -------------------------------------------------------------------
    def choose_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Annotation project folder (new or existing)")
        if folder:
            self.open_project(folder)

    def open_project(self, folder) -> None:
        from ..training.store import AnnotationStore

        try:
            self.store = AnnotationStore(folder)
        except MedsegError as exc:
            return self._notify("error", str(exc))
        self.project_edit.setText(str(self.store.folder))
        for layer in self._layers("image"):
            self.restore_labels(layer)
        self.refresh_counts()

    def restore_labels(self, image_layer) -> None:
        """Put back the saved labels of an image opened again (as a new labels layer)."""
        from napari.layers import Labels

        name = f"{image_layer.name} labels"
        if name in self.viewer.layers:
            return
        image = layer_image(image_layer)
        entry = self.store.find(image)
        if entry is None:
            return
        labels = self.store.read_labels(entry)
        kwargs = labels_layer_kwargs(image, name, label_names=entry.classes)
        if entry.label_classes:  # the objects' classes and colours, as the Segment widget's object list showed them
            kwargs["metadata"][META_KEY]["label_classes"] = dict(entry.label_classes)
        if entry.label_colors:
            kwargs["metadata"][META_KEY]["label_colors"] = dict(entry.label_colors)
            kwargs["colormap"] = label_colormap(entry.label_colors)
        layer = self.viewer.add_layer(Labels(labels.astype(np.uint16), **kwargs))
        self._saved[layer.name] = _digest(layer.data)
        self._reviewed[layer.name] = set(entry.reviewed.get("slices", []))
        self._notify("info", f"Restored the saved labels of {image_layer.name} from the project")

    def save_labels(self, notify: bool = False) -> bool:
        """Save the selected labels layer (with its image) into the store if it changed; True when saved."""
        if self.store is None:
            if notify:
                self._notify("warning", "Choose a project folder for the annotation store first")
            return False
        try:
            _, labels_layer, image = self._selected()
        except MedsegError as exc:
            if notify:
                self._notify("warning", str(exc))
            return False
        data = np.asarray(labels_layer.data)
        digest = _digest(data)
        if self._saved.get(labels_layer.name) == digest and not notify:
            return False
        info = labels_layer.metadata.get(META_KEY, {})
        names = info.get("label_names") or {}
        reviewed = None
        if data.ndim == 3:
            from ..training.store import labelled_slices

            reviewed = {"all": False, "slices": sorted(set(labelled_slices(data)) | self._reviewed.get(labels_layer.name, set()))}
        # prompts (boxes, points, reports) recorded by the Segment widget; each is stored once
        prompts = labels_layer.metadata.get(META_KEY, {}).get("prompts", [])
        new_prompts = prompts[self._prompts_saved.get(labels_layer.name, 0):]
        reports = [p["report"] for p in prompts if p.get("report")]
        try:
            self.store.save(image, data, classes={int(k): str(v) for k, v in names.items()}, reviewed=reviewed,
                            prompts=new_prompts or None, report=reports[-1] if reports else None,
                            label_classes=info.get("label_classes"), label_colors=info.get("label_colors"))
        except MedsegError as exc:
            self._notify("error", f"Could not save the labels: {exc}")
            return False
        self._saved[labels_layer.name] = digest
        self._prompts_saved[labels_layer.name] = len(prompts)
        self.refresh_counts()
        if notify:
            self._notify("info", f"Saved {labels_layer.name} to {self.store.folder.name}")
        return True

    def autosave(self) -> None:
        if self.store is not None and self.labels_combo.currentText():
            self.save_labels()

    def _autosave_changed(self, *_):
        self.autosave_timer.stop()
        if self.autosave_check.isChecked():
            self.autosave_timer.start(self.autosave_spin.value() * 1000)

    def mark_reviewed(self) -> None:
        try:
            _, labels_layer, _ = self._selected()
        except MedsegError as exc:
            return self._notify("warning", str(exc))
        if labels_layer.ndim != 3:
            return self._notify("info", "A 2-D image is reviewed as a whole")
        index = int(round(labels_layer.world_to_data(self.viewer.dims.point)[0]))
        self._reviewed.setdefault(labels_layer.name, set()).add(index)
        self._saved.pop(labels_layer.name, None)
        self.save_labels()

    def refresh_counts(self) -> None:
        from ..training.store import labelled_slices

        parts = []
        if self.store is not None:
            summary = self.store.summary()
            parts.append(f"Project: {summary['images']} image(s) — {summary['reviewed_slices']} reviewed slice(s) in "
                         f"{summary['volumes']} volume(s), {summary['images_2d']} 2-D image(s)")
            if summary["skipped"]:
                parts.append(f"{len(summary['skipped'])} damaged entr(ies) skipped: {summary['skipped'][0]}")
        for layer in self._layers("labels"):
            data = np.asarray(layer.data)
            count = len(labelled_slices(data)) if data.ndim == 3 else int(data.any())
            parts.append(f"Open layer {layer.name}: {count} labelled {'slice' if data.ndim == 3 else 'image'}(s)")
        self.counts_label.setText("\n".join(parts) or "Nothing labelled yet")
