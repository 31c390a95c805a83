"""The Segment dock widget: pick a model, draw boxes or points, get masks, correct, undo (model calls here;
layout in widget_gui, layer glue in controls)."""
from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QFileDialog

from ...errors import PromptError
from ..layers import META_KEY, labels_layer_kwargs
from .controls import NEW_LABELS, Edit, SegmentControls, revert_model_edit, write_model_edit, writable
from .server_picker import ServerPicker, is_remote
from .widget_gui import DIRECTIONS, linkify


class SegmentWidget(SegmentControls):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._edits: list[Edit] = []
        self._predictors: dict = {}
        self._box_count = 0
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.runner.busy_changed.connect(self._update_run_buttons)
        self._bind_shortcuts()
        self._refresh_layers()
        self._model_changed()
        self._find_devices()
        self._start_recovery()

    def _find_devices(self) -> None:
        """List CUDA/MPS devices without blocking the viewer (importing torch takes seconds)."""
        from ..runner import create_worker  # tracked, so that demo and tests can wait for it

        from ...device import available_devices

        self.server_picker = ServerPicker(self.device_combo, self._notify)

        def add(devices):
            for device in devices:
                if self.device_combo.findText(device) < 0:
                    self.device_combo.insertItem(self.server_picker.local_index(), device)

        worker = create_worker(available_devices)
        worker.returned.connect(add)
        worker.start()

    def _start_recovery(self) -> None:
        """Recovery copies of the labels this widget writes; copies left for open images are offered back."""
        from ..recovery import Recovery

        self.recovery = Recovery(self.viewer)
        for layer in self._image_layers():
            self.recovery.offer(layer)
        self.viewer.layers.events.inserted.connect(self._offer_recovery)

    def _offer_recovery(self, event) -> None:
        self.recovery.offer(event.value)



    @property
    def card(self):
        from ...models.registry import get_card

        return get_card(self.model_combo.currentData())

    def _model_changed(self, *_):
        from ...errors import CheckpointError
        from ...models.weights import BUNDLED, INSTALLED, WeightStatus, weight_status

        card = self.card
        try:
            status = weight_status(card)
        except CheckpointError as exc:  # a damaged install record: say so, reinstalling repairs it
            status = WeightStatus("damaged", None, str(exc))
        self.weights_hint = f"Weights: {status.state}" + (f" — {status.detail}" if status.detail else "")
        self.model_status.setText(linkify(self.weights_hint))
        self.model_status.setToolTip(card.description)
        self.copy_hint_button.setVisible(status.state not in (INSTALLED, BUNDLED))
        self._weights_reason = "" if status.state in (INSTALLED, BUNDLED) else \
            f"{card.name}: weights {status.state}. Install them first."
        self._update_run_buttons()
        prompt_model = card.task in ("box2d", "text2d")
        for widget in (self.box_button, self.auto_check, self.segment_button):
            widget.setVisible(prompt_model)
        self.propagate_button.setVisible(card.task == "box2d")
        self.zoom_combo.setEnabled(card.task == "box2d")
        self.direction_combo.setVisible(card.task == "box2d")
        self.report_box.setVisible(card.task == "text2d")
        self.tokenizer_button.setVisible(card.task == "text2d")
        for widget in (self.pos_button, self.neg_button):
            widget.setVisible(card.task == "box2d" and card.family != "lite_medsam")
        self.automatic_button.setVisible(card.task in ("auto2d", "auto3d"))
        self.scope_combo.setVisible(card.task == "auto2d")

    def run_block_reason(self) -> str:
        """Why no run can start now ("" when one can): missing weights, or a run in flight."""
        if self._weights_reason:
            return self._weights_reason
        return "Still working on the previous request; wait or press Cancel." if self.runner.busy else ""

    def _update_run_buttons(self, *_) -> None:
        """The buttons that start runs, and their shortcuts (see widget_gui), enabled only when a run can start."""
        reason = self.run_block_reason()
        for button, tip in ((self.segment_button, "Segment the prompts on this slice (S)"),
                            (self.box_button, "Draw a box; the mask follows (B)"),
                            (self.propagate_button, "From the displayed slice: the selected label's mask there (a "
                                                    "model mask or your correction) is carried on until the object ends"),
                            (self.automatic_button, "Segment with the automatic model")):
            button.setEnabled(not reason)
            button.setToolTip(reason or tip)

    def segment_prompts(self) -> None:
        try:
            image_layer = self.image_layer()
            axis, index = self._plane_position(image_layer)
            box, points, point_labels = self._current_prompts(axis, index)
            if box is None and not points:
                raise PromptError("Draw a box (B) or add points on the displayed slice first")
        except PromptError as exc:
            return self._notify("warning", str(exc))
        image = self._image(image_layer)
        limits = tuple(image_layer.contrast_limits)
        card, device = self.card, self.device_combo.currentText()
        precision = self.precision_combo.currentText()
        prompt = {"model": card.id, "axis": axis, "slice": index, "box": box, "points": points,
                  "point_labels": point_labels}
        if card.task == "text2d":
            return self._segment_report(image_layer, image, axis, index, box, prompt, precision)

        zoom = self.zoom_combo.currentText()

        def job(progress, cancel):
            from ...inference.zoom import predict_on_plane

            if is_remote(device):
                return self.server_picker.plane_mask(device, image_layer, image, card.id, precision, axis, index,
                                                     limits, box, points, point_labels)
            predictor = self._predictor(card, device, progress, precision)
            progress(0, 0, "Embedding the image" if axis is None else
                     f"Embedding slice {index} of {image.spatial_shape[axis]}")
            region = predict_on_plane(predictor, image, axis, index, limits, box,
                                      np.array(points) if points else None,
                                      np.array(point_labels) if points else None, zoom)
            shape = image.spatial_shape
            return region.full(shape if axis is None else shape[:axis] + shape[axis + 1:])

        self.runner.run(job, lambda mask: self._write_mask(image_layer, image, axis, index, mask, prompt), "Segmenting")

    def _segment_report(self, image_layer, image, axis, index, box, prompt, precision="faithful") -> None:
        """Text-guided models: the box places the 256x256 lesion crop, the report steers the decoder."""
        if axis not in (None, 0):
            return self._notify("warning", "Text-guided models work on axial slices; show the first axis' slices")
        if box is None:
            return self._notify("warning", "Draw a box (or a small box as a click) on the lesion first")
        report = self.report_box.text()
        prompt["report"] = report
        card, device = self.card, self.device_combo.currentText()

        def job(progress, cancel):
            from ...models.load import load_model
            from ...segmentation import segment

            kwargs = {"box": (*box, index) if axis == 0 else box, "report": report, "precision": precision}
            if is_remote(device):
                labels, _ = self.server_picker.segment(device, image, card.id, progress, cancel, **kwargs)
                return labels[index] > 0 if axis == 0 else labels > 0
            options = {"tokenizer": self.tokenizer_folder} if self.tokenizer_folder else {}
            labels = segment(image, load_model(card.id, device=device, **options), **kwargs)
            return labels[index] > 0 if axis == 0 else labels > 0

        self.runner.run(job, lambda mask: self._write_mask(image_layer, image, axis, index, mask, prompt),
                        "Reading the report and segmenting")

    def _predictor(self, card, device, progress=None, precision="faithful"):
        from ...inference.box2d import BoxPredictor
        from ...inference.embedding_cache import default_store
        from ...models.load import load_model

        key = (card.id, device, precision)
        if key not in self._predictors:
            if progress is not None:
                progress(0, 0, f"Loading {card.name}")
            loaded = load_model(card.id, device=device)
            self._predictors = {key: BoxPredictor(loaded, device=loaded.info.get("device"), precision=precision,
                                                  store=default_store())}
        return self._predictors[key]

    def _write_mask(self, image_layer, image, axis, index, mask, prompt=None) -> None:
        if not mask.any():
            return self._notify("info", "The model found no object in this box; try a tighter box or another model.")
        labels = self.labels_layer(image_layer, image)
        value = self._next_value(labels)
        in_plane = np.nonzero(mask)
        indices = in_plane if axis is None else (*in_plane[:axis], np.full_like(in_plane[0], index), *in_plane[axis:])
        free = writable(np.asarray(labels.data[indices]), value, self.overwrite_check.isChecked())
        edit = write_model_edit(labels, tuple(i[free] for i in indices), value,
                                None if axis is None else (axis, index), value)
        if edit is None:
            return self._notify("info", "The mask lies inside other objects; tick \"Overwrite other objects\" to replace them.")
        self._edits.append(edit)
        self.recovery.watch(labels, image_layer)
        labels.selected_label = value
        if prompt is not None:  # kept with the labels: the annotation store and training read them
            import time

            record = {**prompt, "label": value, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            labels.metadata.setdefault(META_KEY, {}).setdefault("prompts", []).append(record)

    def _next_value(self, labels) -> int:
        if self.new_object_check.isChecked():
            value = int(labels.data.max()) + 1
            self.value_spin.setValue(min(value, 65535))
        return self.value_spin.value()

    # ---- 3-D propagation --------------------------------------------------------------------
    def propagate(self) -> None:
        """Carry the selected label's mask on the displayed slice through the volume (any slice, any time)."""
        try:
            image_layer = self.image_layer()
            labels, axis, index, value = self._propagation_start(image_layer)
        except PromptError as exc:
            return self._notify("warning", str(exc))
        start_mask = np.take(np.asarray(labels.data), index, axis=axis) == value
        overwrite = self.overwrite_check.isChecked()
        directions = DIRECTIONS[self.direction_combo.currentText()]
        precision, zoom = self.precision_combo.currentText(), self.zoom_combo.currentText()
        image = self._image(image_layer)
        limits = tuple(image_layer.contrast_limits)
        card, device = self.card, self.device_combo.currentText()
        if is_remote(device):
            return self._notify("warning", "Propagation runs on this machine's devices; choose cpu or a GPU "
                                           "(or run medseg segment --propagate --server)")

        def job(progress, cancel):
            from ...errors import Cancelled
            from ...inference.planes import resample_mask, take_plane
            from ...inference.propagation import propagate_slices

            predictor = self._predictor(card, device, progress, precision)
            planes = {}

            def slice_at(i):
                planes.clear()  # only the slice being worked on is kept
                planes[i] = take_plane(image, axis, i, limits)
                return planes[i].pixels

            seed = resample_mask(start_mask, take_plane(image, axis, index, limits).pixels.shape[:2])
            found, cancelled = {}, False
            try:
                for i, mask in propagate_slices(predictor, slice_at, image.spatial_shape[axis], index, seed,
                                                directions=directions, zoom=zoom, progress=progress,
                                                cancel=cancel):
                    found[i] = planes[i].mask_to_plane(mask)
            except Cancelled:
                cancelled = True
            return found, cancelled

        def done(result):
            found, cancelled = result
            edit = self._write_propagation(labels, axis, value, found, overwrite)
            if edit is not None:
                self._edits.append(edit)
                self.recovery.watch(labels, image_layer)
            kept = " (cancelled; the slices done so far are kept)" if cancelled else ""
            self._notify("info", f"Propagated label {value} through {len(found)} slices{kept}")

        self.runner.run(job, done, f"Propagating label {value} from slice {index}")

    def _propagation_start(self, image_layer):
        """(labels layer, axis, displayed slice, label value) to propagate from, or PromptError."""
        axis, index = self._plane_position(image_layer)
        if axis is None:
            raise PromptError("Propagation needs a volume; this image is 2-D")
        name = self.labels_combo.currentText()
        labels = self.viewer.layers[name] if name != NEW_LABELS and name in self.viewer.layers else (
            self._edits[-1].layer if self._edits else None)
        if labels is None:
            raise PromptError("Segment an object on one slice of a volume first, then propagate it.")
        value = int(labels.selected_label)
        if not (np.take(np.asarray(labels.data), index, axis=axis) == value).any():
            raise PromptError(f"Label {value} has no voxels on slice {index}: segment or paint the object here, "
                              "or select its label, then propagate")
        return labels, axis, index, value

    @staticmethod
    def _write_propagation(labels, axis, value, found, overwrite):
        """One undo step: on each slice reached, the object's voxels become the new mask's."""
        parts, values = [], []
        for i, mask in found.items():
            current = np.take(np.asarray(labels.data), i, axis=axis)
            new = mask & writable(current, value, overwrite)
            for where, v in ((new, value), ((current == value) & ~mask, 0)):
                in_plane = np.nonzero(where)
                parts.append((*in_plane[:axis], np.full_like(in_plane[0], i), *in_plane[axis:]))
                values.append(np.full(len(in_plane[0]), v))
        if not parts:
            return None
        indices = tuple(np.concatenate(column) for column in zip(*parts))
        return write_model_edit(labels, indices, np.concatenate(values), value=value)

    # ---- automatic models -------------------------------------------------------------------
    def run_automatic(self) -> None:
        try:
            image_layer = self.image_layer()
            axis, index = self._plane_position(image_layer) if self.scope_combo.currentText() == "current slice" else (None, None)
        except PromptError as exc:
            return self._notify("warning", str(exc))
        image = self._image(image_layer)
        card, device = self.card, self.device_combo.currentText()
        precision = self.precision_combo.currentText()
        if axis is not None and axis != 0:
            return self._notify("warning", "Automatic 2D models run on axial slices; show the first axis' slices")
        target = image if index is None else image.with_array(image.array[index], channel_axis=image.channel_axis)
        if index is not None:
            target.spacing, target.origin, target.direction = image.spacing[:2], image.origin[:2], image.direction[:2, :2]

        def job(progress, cancel):
            from ...models.load import load_model
            from ...segmentation import segment

            if is_remote(device):
                return self.server_picker.segment(device, target, card.id, progress, cancel, precision=precision)
            loaded = load_model(card.id, device=device)
            return segment(target, loaded, progress=progress, cancel=cancel, precision=precision), loaded.classes

        def done(result):
            labels_array, classes = result
            self._show_classes(image_layer, image, labels_array, classes, index)

        self.runner.run(job, done, f"Running {card.name}")

    def _show_classes(self, image_layer, image, labels_array, classes, index) -> None:
        import pandas as pd
        from napari.layers import Labels

        from ...models.registry import class_table
        from ..legend import LabelLegend

        card = self.card
        name = f"{image_layer.name} {card.id}"
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
        else:
            kwargs = labels_layer_kwargs(image, name, label_names=classes)
            layer = self.viewer.add_layer(Labels(np.zeros(image.spatial_shape, dtype=np.uint16), **kwargs))
        current = np.asarray(layer.data) if index is None else np.asarray(layer.data[index])
        changed = np.nonzero(current != labels_array)  # this model's own layer: its classes replace its last run
        indices = changed if index is None else (np.full_like(changed[0], index), *changed)
        edit = write_model_edit(layer, indices, labels_array[changed])
        if edit is not None:
            self._edits.append(edit)
            self.recovery.watch(layer, image_layer)
        classes = classes or {int(v): str(v) for v in np.unique(labels_array)}
        values = sorted(classes)
        layer.features = pd.DataFrame({"index": values, "name": [classes[v] for v in values]})
        table = class_table(card.classes) if isinstance(card.classes, str) and card.classes != "from checkpoint" else {}
        self.legend = LabelLegend(layer, classes, table.get("colors"), table.get("groups"))
        self.viewer.window.add_dock_widget(self.legend, name=f"Legend: {layer.name}", area="left")
        layer.refresh()
        found = [classes.get(int(v), str(v)) for v in np.unique(labels_array) if v]
        self._notify("info", f"Found {len(found)} classes: {', '.join(found[:8])}{'...' if len(found) > 8 else ''}")

    # ---- labels bookkeeping -----------------------------------------------------------------
    def accept(self) -> None:
        self.clear_prompts()
        self._edits.clear()
        self._notify("info", "Accepted: labels kept; the next object starts fresh.")

    def undo(self) -> None:
        if not self._edits:
            return self._notify("info", "Nothing to undo")
        edit = self._edits.pop()
        if not revert_model_edit(edit):
            self._notify("info", "The last mask was already undone or painted over")

    def open_finetune(self):
        """Dock the Fine-tune widget (once) with this widget's model selected."""
        _, widget = self.viewer.window.add_plugin_dock_widget("napari-medseg", "Fine-tune on my labels")
        if hasattr(widget, "select_model"):
            widget.select_model(self.card.id)
        return widget

    def choose_tokenizer(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Folder with tokenizer files (vocab.txt, tokenizer.json)")
        if folder:
            self.tokenizer_folder = folder
            self.tokenizer_button.setText(f"Tokenizer: {folder}")

    def copy_weights_hint(self) -> None:
        from qtpy.QtWidgets import QApplication

        QApplication.clipboard().setText(self.weights_hint)

    def install_weights(self) -> None:
        from ...models.weights import install_from_file

        card = self.card
        path, _ = QFileDialog.getOpenFileName(self, f"Weights file for {card.name} ({card.weight.file})")
        if not path:
            return
        self.runner.run(lambda progress, cancel: install_from_file(card, path),
                        lambda target: (self._notify("info", f"Installed {target}"), self._model_changed()),
                        f"Installing {card.weight.file}")
