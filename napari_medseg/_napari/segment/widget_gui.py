"""The Segment widget's layout: every control, its group and its shortcut (no layer or model logic)."""
from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from ...inference.intensity import CT_WINDOWS
from ..docks import collapsible, narrow_combos, refit_view_on_show, scroll_body
from ..runner import TaskRunner
from .object_list import ObjectListView

DIRECTIONS = {"both directions": (1, -1), "higher slices": (1,), "lower slices": (-1,)}


def linkify(text: str) -> str:
    """Plain text as rich text whose web addresses are links."""
    import html
    import re

    link = r'<a href="\1" style="color: #5aa9ff">\1</a>'  # Qt's default blue is unreadable on napari's dark theme
    return re.sub(r"(https?://[^\s<]+[^\s<.,;:)])", link, html.escape(text, quote=False))


class SegmentGUI(QWidget):
    """Builds the controls and connects them to the actions that the subclasses define."""

    # ---- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        from ...models.registry import TASK_LABELS, list_cards

        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        for card in list_cards():
            self.model_combo.addItem(f"{card.name}  [{TASK_LABELS[card.task]}]", card.id)
        self.model_status = QLabel()
        self.model_status.setWordWrap(True)
        self.model_status.setTextFormat(Qt.TextFormat.RichText)  # the weights' URL as a link
        self.model_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.model_status.setOpenExternalLinks(True)
        self.copy_hint_button = QPushButton("Copy")
        self.copy_hint_button.setToolTip("Copy the instructions (with the URL) to the clipboard")
        self.install_button = QPushButton("Install weights from file...")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu"])
        self.device_combo.setToolTip("auto: CUDA if available, then MPS, then CPU")
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["faithful", "fast"])
        self.precision_combo.setToolTip("faithful: float32, the authors' results; fast: reduced precision where the "
                                        "hardware has it (bfloat16), can change masks")
        self.zoom_combo = QComboBox()
        self.zoom_combo.addItems(["auto", "on", "off"])
        self.zoom_combo.setToolTip("Box models: predict in a crop around the box at the image's own resolution. auto: "
                                   "where the slice would be shrunk more than 2x to fit the model's input; on: "
                                   "always; off: the whole slice (the authors' recipe)")
        self.window_combo = QComboBox()
        self.window_combo.addItems(["(keep)", *CT_WINDOWS])
        self.window_combo.setToolTip("CT window/level preset; prompt models see the image as displayed")

        setup = QWidget()
        form = QFormLayout(setup)
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("", self.model_status)
        weights_row = QHBoxLayout()
        weights_row.addWidget(self.install_button, 1)
        weights_row.addWidget(self.copy_hint_button)
        form.addRow("", weights_row)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Zoom to box", self.zoom_combo)
        form.addRow("CT window", self.window_combo)

        self.box_button = QPushButton("Draw box (B)")
        self.pos_button = QPushButton("+ point")
        self.neg_button = QPushButton("- point")
        self.auto_check = QCheckBox("Segment when a box is drawn")
        self.auto_check.setChecked(True)
        self.segment_button = QPushButton("Segment")
        self.propagate_button = QPushButton("Propagate through slices")
        self.direction_combo = QComboBox()
        self.direction_combo.addItems(list(DIRECTIONS))
        from ..report_box import ReportBox

        self.report_box = ReportBox()
        self.tokenizer_button = QPushButton("Tokenizer folder...")
        self.tokenizer_button.setToolTip("Folder with the text model's tokenizer files (not in the checkpoint); "
                                         "default: the Hugging Face cache")
        self.tokenizer_folder: str | None = None
        self.automatic_button = QPushButton("Run automatic segmentation")
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(["whole image", "current slice"])
        prompts = QWidget()
        grid = QVBoxLayout(prompts)
        row = QHBoxLayout()
        for button in (self.box_button, self.pos_button, self.neg_button):
            row.addWidget(button)
        grid.addLayout(row)
        grid.addWidget(self.report_box)
        grid.addWidget(self.tokenizer_button)
        grid.addWidget(self.auto_check)
        grid.addWidget(self.segment_button)
        propagate_row = QHBoxLayout()
        propagate_row.addWidget(self.propagate_button, 1)
        propagate_row.addWidget(self.direction_combo)
        grid.addLayout(propagate_row)
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
        self.undo_button.setToolTip("Revert the voxels the last mask set that still hold its value (your brush "
                                    "edits stay); Ctrl+Z / Ctrl+Shift+Z step through the layer's whole history")
        self.clear_button = QPushButton("Clear prompts")
        self.accept_button.setToolTip("Keep the labels; the next box starts a new object")
        self.clear_button.setToolTip("Remove the boxes and points")
        output = QWidget()
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
        self.object_list = ObjectListView()
        self.groups = {title: collapsible(title, part) for title, part in (
            ("Image and model", setup), ("Prompts", prompts), ("Labels", output), ("Objects", self.object_list))}
        layout = scroll_body(self)
        for part in (*self.groups.values(), self.finetune_button, self.runner):
            layout.addWidget(part)
        layout.addStretch(1)
        narrow_combos(self)
        refit_view_on_show(self.viewer, self)

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
        self.copy_hint_button.clicked.connect(self.copy_weights_hint)
        self.labels_combo.currentTextChanged.connect(self._attach_objects)
        self.model_combo.currentIndexChanged.connect(self.refresh_objects)  # its classes are the choices
        self.object_list.renamed.connect(self.rename_object)
        self.object_list.category_changed.connect(self.set_object_class)
        self.object_list.recolor_requested.connect(self.choose_object_color)
        self.object_list.delete_requested.connect(self.delete_object)
        self.object_list.selected.connect(self.select_object)

    def _shortcuts(self) -> dict:
        """Keys as in micro-sam's annotators: the method each calls (looked up when pressed) and its button."""
        return {"B": ("draw_box", self.box_button), "S": ("segment_prompts", self.segment_button),
                "C": ("accept", self.accept_button), "Shift-C": ("clear_prompts", self.clear_button)}

    def _bind_shortcuts(self) -> None:
        """On the viewer and on every layer: an active layer's own keys (napari's B, S, C) come before the viewer's."""
        for layer in self.viewer.layers:
            self._bind_layer_keys(layer)
        self.viewer.layers.events.inserted.connect(lambda event: self._bind_layer_keys(event.value))
        for key, (action, button) in self._shortcuts().items():
            self.viewer.bind_key(key, lambda _viewer, key=key: self._press(key), overwrite=True)
            tip = button.toolTip()
            button.setToolTip(f"{tip} ({key})" if tip else f"Shortcut: {key}")

    def _bind_layer_keys(self, layer) -> None:
        for key in self._shortcuts():
            layer.bind_key(key, lambda _layer, key=key: self._press(key), overwrite=True)

    def _press(self, key: str) -> None:
        """A shortcut does what its button does, and nothing (saying why, as the button's tooltip does)
        while the button is disabled."""
        action, button = self._shortcuts()[key]
        if not button.isEnabled():
            return self._notify("warning", button.toolTip())
        getattr(self, action)()
