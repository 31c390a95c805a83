"""The Segment dock widget: pick a model, draw boxes or points, get masks, correct, undo."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton,
    QSpinBox, QVBoxLayout, QWidget,
)

from ..errors import PromptError
from ..inference.intensity import CT_WINDOWS, window_limits
from .combos import fill_combo
from .layers import META_KEY, labels_layer_kwargs, placement, reference_image
from .runner import TaskRunner

BOX_LAYER, POINT_LAYER = "medseg boxes", "medseg points"
NEW_LABELS = "New labels layer"


@dataclass
class Edit:
    """The voxels one model result changed (one step in the layer's own undo history)."""
    layer: object
    indices: tuple  # numpy multi-index of the changed voxels
    before: np.ndarray
    after: np.ndarray
    plane: tuple | None = None  # (axis, index) of a one-slice mask in a volume
    value: int = 0


def write_model_edit(layer, indices, values, plane=None, value=0) -> Edit | None:
    """Write ``values`` at ``indices`` through napari's history-recording API (Ctrl+Z undoes it)."""
    values = np.broadcast_to(np.asarray(values, dtype=layer.data.dtype), indices[0].shape)
    changed = np.asarray(layer.data[indices]) != values
    indices, values = tuple(i[changed] for i in indices), values[changed]
    if not values.size:
        return None
    before = np.array(layer.data[indices], copy=True)
    layer.data_setitem(indices, values)
    return Edit(layer, indices, before, values, plane, value)


def revert_model_edit(edit: Edit) -> int:
    """Put back the voxels that still hold the model's value; later manual edits stay. Returns the count."""
    keep = np.asarray(edit.layer.data[edit.indices]) == edit.after
    if keep.any():
        edit.layer.data_setitem(tuple(i[keep] for i in edit.indices), edit.before[keep])
    return int(keep.sum())


def writable(current: np.ndarray, value: int, overwrite: bool) -> np.ndarray:
    """Where a new mask of ``value`` may write: background and its own object, or anywhere."""
    return np.ones(current.shape, bool) if overwrite else (current == 0) | (current == value)


class SegmentWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._edits: list[Edit] = []
        self._predictors: dict = {}
        self._box_count = 0
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._bind_shortcuts()
        self._refresh_layers()
        self._model_changed()
        self._find_devices()

    # ---- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        from ..models.registry import TASK_LABELS, list_cards

        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        for card in list_cards():
            self.model_combo.addItem(f"{card.name}  [{TASK_LABELS[card.task]}]", card.id)
        self.model_status = QLabel()
        self.model_status.setWordWrap(True)
        self.install_button = QPushButton("Install weights from file...")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu"])
        self.device_combo.setToolTip("auto: CUDA if available, then MPS, then CPU")
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["faithful", "fast"])
        self.precision_combo.setToolTip("faithful: float32, the authors' results; fast: reduced precision where the "
                                        "hardware has it (bfloat16), can change masks")
        self.window_combo = QComboBox()
        self.window_combo.addItems(["(keep)", *CT_WINDOWS])
        self.window_combo.setToolTip("CT window/level preset; prompt models see the image as displayed")

        setup = QGroupBox("Image and model")
        form = QFormLayout(setup)
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.model_status)
        form.addRow("", self.install_button)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        form.addRow("CT window", self.window_combo)

        self.box_button = QPushButton("Draw box (B)")
        self.pos_button = QPushButton("+ point")
        self.neg_button = QPushButton("- point")
        self.auto_check = QCheckBox("Segment when a box is drawn")
        self.auto_check.setChecked(True)
        self.segment_button = QPushButton("Segment")
        self.propagate_button = QPushButton("Propagate through slices")
        from .report_box import ReportBox

        self.report_box = ReportBox()
        self.tokenizer_button = QPushButton("Tokenizer folder...")
        self.tokenizer_button.setToolTip("Folder with the text model's tokenizer files (not in the checkpoint); "
                                         "default: the Hugging Face cache")
        self.tokenizer_folder: str | None = None
        self.automatic_button = QPushButton("Run automatic segmentation")
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(["whole image", "current slice"])
        prompts = QGroupBox("Prompts")
        grid = QVBoxLayout(prompts)
        row = QHBoxLayout()
        for button in (self.box_button, self.pos_button, self.neg_button):
            row.addWidget(button)
        grid.addLayout(row)
        grid.addWidget(self.report_box)
        grid.addWidget(self.tokenizer_button)
        grid.addWidget(self.auto_check)
        grid.addWidget(self.segment_button)
        grid.addWidget(self.propagate_button)
        auto_row = QHBoxLayout()
        auto_row.addWidget(self.automatic_button, 1)
        auto_row.addWidget(self.scope_combo)
        grid.addLayout(auto_row)

        self.labels_combo = QComboBox()
        self.value_spin = QSpinBox()
        self.value_spin.setRange(1, 65535)
        self.new_object_check = QCheckBox("New label value per object")
        self.new_object_check.setChecked(True)
        self.overwrite_check = QCheckBox("Overwrite other objects")
        self.overwrite_check.setToolTip("Off: a new mask fills only background and its own object's voxels")
        self.accept_button = QPushButton("Accept")
        self.undo_button = QPushButton("Undo last")
        self.clear_button = QPushButton("Clear prompts")
        output = QGroupBox("Labels")
        out_form = QFormLayout(output)
        out_form.addRow("Target", self.labels_combo)
        out_form.addRow("Label value", self.value_spin)
        out_form.addRow("", self.new_object_check)
        out_form.addRow("", self.overwrite_check)
        buttons = QHBoxLayout()
        for button in (self.accept_button, self.undo_button, self.clear_button):
            buttons.addWidget(button)
        out_form.addRow(buttons)

        self.finetune_button = QPushButton("Fine-tune on my labels...")
        self.finetune_button.setToolTip("Train the selected model on the labels you corrected")
        self.runner = TaskRunner(self._notify)
        layout = QVBoxLayout(self)
        for part in (setup, prompts, output, self.finetune_button, self.runner):
            layout.addWidget(part)
        layout.addStretch(1)

        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.install_button.clicked.connect(self.install_weights)
        self.window_combo.currentTextChanged.connect(self._apply_window)
        self.box_button.clicked.connect(self.draw_box)
        self.pos_button.clicked.connect(lambda: self.add_points(True))
        self.neg_button.clicked.connect(lambda: self.add_points(False))
        self.segment_button.clicked.connect(self.segment_prompts)
        self.propagate_button.clicked.connect(self.propagate)
        self.automatic_button.clicked.connect(self.run_automatic)
        self.accept_button.clicked.connect(self.accept)
        self.undo_button.clicked.connect(self.undo)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.finetune_button.clicked.connect(self.open_finetune)
        self.tokenizer_button.clicked.connect(self.choose_tokenizer)

    def _shortcuts(self) -> dict:
        """Keys as in micro-sam's annotators, each with its button."""
        return {"B": (self.draw_box, self.box_button), "S": (self.segment_prompts, self.segment_button),
                "C": (self.accept, self.accept_button), "Shift-C": (self.clear_prompts, self.clear_button)}

    def _bind_shortcuts(self) -> None:
        for key, (action, button) in self._shortcuts().items():
            self.viewer.bind_key(key, lambda _viewer, action=action: action(), overwrite=True)
            tip = button.toolTip()
            button.setToolTip(f"{tip} ({key})" if tip else f"Shortcut: {key}")

    def _find_devices(self) -> None:
        """List CUDA/MPS devices without blocking the viewer (importing torch takes seconds)."""
        from .runner import create_worker  # tracked, so that demo and tests can wait for it

        from ..device import available_devices

        def add(devices):
            for device in devices:
                if self.device_combo.findText(device) < 0:
                    self.device_combo.addItem(device)

        worker = create_worker(available_devices)
        worker.returned.connect(add)
        worker.start()

    # ---- helpers ----------------------------------------------------------------------------
    def _notify(self, level: str, message: str) -> None:
        from napari.utils import notifications

        {"error": notifications.show_error, "warning": notifications.show_warning}.get(
            level, notifications.show_info)(message)

    def _image_layers(self):
        from napari.layers import Image as ImageLayer

        return [layer for layer in self.viewer.layers if isinstance(layer, ImageLayer)]

    def _refresh_layers(self, *_):
        from napari.layers import Labels

        fill_combo(self.image_combo, [layer.name for layer in self._image_layers()])
        fill_combo(self.labels_combo, [NEW_LABELS, *(layer.name for layer in self.viewer.layers if isinstance(layer, Labels))])

    @property
    def card(self):
        from ..models.registry import get_card

        return get_card(self.model_combo.currentData())

    def _model_changed(self, *_):
        from ..models.weights import weight_status

        card = self.card
        status = weight_status(card)
        self.model_status.setText(f"Weights: {status.state}" + (f" — {status.detail}" if status.detail else ""))
        self.model_status.setToolTip(card.description)
        prompt_model = card.task in ("box2d", "text2d")
        for widget in (self.box_button, self.auto_check, self.segment_button):
            widget.setVisible(prompt_model)
        self.propagate_button.setVisible(card.task == "box2d")
        self.report_box.setVisible(card.task == "text2d")
        self.tokenizer_button.setVisible(card.task == "text2d")
        for widget in (self.pos_button, self.neg_button):
            widget.setVisible(card.task == "box2d" and card.family != "lite_medsam")
        self.automatic_button.setVisible(card.task in ("auto2d", "auto3d"))
        self.scope_combo.setVisible(card.task == "auto2d")

    def image_layer(self):
        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise PromptError("Open an image first (File > Open, or File > Open Sample > MedSeg)")
        return self.viewer.layers[name]

    def _image(self, layer):
        data = np.asarray(layer.data)
        spatial = data[..., 0] if layer.rgb else data  # geometry is spatial; colour is the last axis
        image = reference_image(spatial, layer.metadata, {"scale": layer.scale, "translate": layer.translate,
                                                          "affine": layer.affine.affine_matrix})
        info = layer.metadata.get(META_KEY, {})
        image.intensity = "rgb" if layer.rgb else info.get("intensity", "raw")
        image.modality = info.get("modality", image.modality)
        if layer.rgb:
            image = image.with_array(data, channel_axis=-1, intensity="rgb")
        return image

    def _apply_window(self, name: str) -> None:
        if name in CT_WINDOWS and self.image_combo.currentText() in self.viewer.layers:
            self.viewer.layers[self.image_combo.currentText()].contrast_limits = window_limits(name)

    def labels_layer(self, image_layer, image):
        from napari.layers import Labels

        name = self.labels_combo.currentText()
        if name and name != NEW_LABELS and name in self.viewer.layers:
            return self.viewer.layers[name]
        shape = image.spatial_shape
        layer = self.viewer.add_layer(Labels(np.zeros(shape, dtype=np.uint16),
                                             **labels_layer_kwargs(image, f"{image_layer.name} labels")))
        self.labels_combo.setCurrentText(layer.name)
        self.viewer.layers.selection.active = image_layer
        return layer

    def _plane_position(self, layer):
        """(axis held fixed, index) for the displayed 2-D plane of ``layer``; (None, None) for 2-D images."""
        ndim = layer.ndim
        if ndim == 2:
            return None, None
        if self.viewer.dims.ndisplay != 2:
            raise PromptError("Switch to the 2D view to draw prompts")
        displayed = [d - (self.viewer.dims.ndim - ndim) for d in self.viewer.dims.displayed]
        axis = next(a for a in range(ndim) if a not in displayed)
        point = layer.world_to_data(self.viewer.dims.point)
        return axis, int(round(point[axis]))

    def _prompt_layer(self, kind: str, image_layer):
        name = BOX_LAYER if kind == "shapes" else POINT_LAYER
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        image = self._image(image_layer)
        kwargs = {"name": name, "ndim": image.ndim, **placement(image)}
        if kind == "shapes":
            layer = self.viewer.add_shapes(edge_color="yellow", face_color="transparent", edge_width=2, **kwargs)
            layer.events.data.connect(self._shapes_changed)
        else:
            layer = self.viewer.add_points(features={"positive": np.zeros(0, bool)}, face_color="positive",
                                           face_color_cycle=["magenta", "lime"], size=6, **kwargs)
        return layer

    # ---- prompts ----------------------------------------------------------------------------
    def draw_box(self) -> None:
        try:
            layer = self._prompt_layer("shapes", self.image_layer())
        except PromptError as exc:
            return self._notify("warning", str(exc))
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    def add_points(self, positive: bool) -> None:
        try:
            layer = self._prompt_layer("points", self.image_layer())
        except PromptError as exc:
            return self._notify("warning", str(exc))
        layer.feature_defaults["positive"] = positive
        layer.current_face_color = "lime" if positive else "magenta"
        self.viewer.layers.selection.active = layer
        layer.mode = "add"

    def _shapes_changed(self, event) -> None:
        layer = event.source
        count = len(layer.data)
        added = count > self._box_count and getattr(event, "action", "added") in ("added", None)
        self._box_count = count
        if added and self.auto_check.isChecked() and layer.shape_type[-1] == "rectangle":
            self.segment_prompts()

    def _current_prompts(self, axis, index):
        """The newest box and all points on the displayed plane, in plane pixels."""
        from ..inference.planes import box_from_rectangle

        box, points, labels = None, [], []
        displayed = None if axis is None else [a for a in range(3) if a != axis]
        if BOX_LAYER in self.viewer.layers:
            for vertices in reversed(self.viewer.layers[BOX_LAYER].data):
                if axis is None or np.allclose(vertices[:, axis], index, atol=0.5):
                    box = box_from_rectangle(vertices, displayed or (0, 1))
                    break
        if POINT_LAYER in self.viewer.layers:
            layer = self.viewer.layers[POINT_LAYER]
            for coords, positive in zip(layer.data, layer.features["positive"]):
                if axis is None or abs(coords[axis] - index) < 0.5:
                    rc = coords if axis is None else coords[displayed]
                    points.append((rc[1] + 0.5, rc[0] + 0.5))
                    labels.append(int(bool(positive)))
        return box, points, labels

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

        def job(progress, cancel):
            from ..inference.planes import take_plane

            predictor = self._predictor(card, device, precision)
            plane = take_plane(image, axis, index, limits)
            predictor.set_image(plane.pixels)
            mask = predictor.predict(
                box=plane.box_to_pixels(box) if box else None,
                points=plane.points_to_pixels(np.array(points)) if points else None,
                point_labels=np.array(point_labels) if points else None,
            )
            return plane.mask_to_plane(mask)

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
            from ..models.load import load_model
            from ..segmentation import segment

            options = {"tokenizer": self.tokenizer_folder} if self.tokenizer_folder else {}
            labels = segment(image, load_model(card.id, device=device, **options),
                             box=(*box, index) if axis == 0 else box, report=report, precision=precision)
            return labels[index] > 0 if axis == 0 else labels > 0

        self.runner.run(job, lambda mask: self._write_mask(image_layer, image, axis, index, mask, prompt),
                        "Reading the report and segmenting")

    def _predictor(self, card, device, precision="faithful"):
        from ..inference.box2d import BoxPredictor
        from ..models.load import load_model

        key = (card.id, device, precision)
        if key not in self._predictors:
            loaded = load_model(card.id, device=device)
            self._predictors = {key: BoxPredictor(loaded, device=loaded.info.get("device"), precision=precision)}
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
        from ..inference.planes import resample_mask, take_plane

        edit = self._edits[-1] if self._edits else None
        if edit is None or edit.plane is None:
            return self._notify("warning", "Segment an object on one slice of a volume first, then propagate it.")
        (axis, index), labels, value = edit.plane, edit.layer, edit.value
        start_mask = np.take(np.asarray(labels.data), index, axis=axis) == value
        overwrite = self.overwrite_check.isChecked()
        image_layer = self.image_layer()
        image = self._image(image_layer)
        limits = tuple(image_layer.contrast_limits)
        card, device = self.card, self.device_combo.currentText()
        precision = self.precision_combo.currentText()

        def job(progress, cancel):
            predictor = self._predictor(card, device, precision)
            planes = [take_plane(image, axis, i, limits) for i in range(image.spatial_shape[axis])]
            seed = resample_mask(start_mask, planes[index].pixels.shape[:2])
            masks = predictor.propagate(np.stack([p.pixels for p in planes]), index, seed,
                                        progress=progress, cancel=cancel)
            return np.stack([p.mask_to_plane(m) for p, m in zip(planes, masks)])

        def done(masks):
            moved = np.moveaxis(masks, 0, axis)
            indices = np.nonzero(moved & writable(np.asarray(labels.data), value, overwrite))
            edit = write_model_edit(labels, indices, value, value=value)
            if edit is not None:
                self._edits.append(edit)
            self._notify("info", f"Propagated label {value} through {int(masks.reshape(len(masks), -1).any(1).sum())} slices")

        self.runner.run(job, done, "Propagating")

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
            from ..models.load import load_model
            from ..segmentation import segment

            loaded = load_model(card.id, device=device)
            return segment(target, loaded, progress=progress, cancel=cancel, precision=precision), loaded.classes

        def done(result):
            labels_array, classes = result
            self._show_classes(image_layer, image, labels_array, classes, index)

        self.runner.run(job, done, f"Running {card.name}")

    def _show_classes(self, image_layer, image, labels_array, classes, index) -> None:
        import pandas as pd
        from napari.layers import Labels

        from ..models.registry import class_table
        from .legend import LabelLegend

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

    def clear_prompts(self) -> None:
        for name in (BOX_LAYER, POINT_LAYER):
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.data = []
        self._box_count = 0

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

    def install_weights(self) -> None:
        from ..models.weights import install_from_file

        card = self.card
        path, _ = QFileDialog.getOpenFileName(self, f"Weights file for {card.name} ({card.weight.file})")
        if not path:
            return
        self.runner.run(lambda progress, cancel: install_from_file(card, path),
                        lambda target: (self._notify("info", f"Installed {target}"), self._model_changed()),
                        f"Installing {card.weight.file}")
