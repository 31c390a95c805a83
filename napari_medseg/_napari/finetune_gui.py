"""The Fine-tune dock's layout (no viewer, no store, no process): the controls in collapsible groups inside
a scroll area, so that the dock fits a 1366x768 screen beside the Segment widget, and the live plot.

``FinetuneGui`` -> ``FinetuneControls`` (layers and the annotation store, finetune_controls.py) ->
``FinetuneWidget`` (the training process, finetune.py), as napari-nninteractive splits its widget.
"""
from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QFrame, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
    QScrollArea, QSpinBox, QVBoxLayout, QWidget,
)
from superqt import QCollapsible

from .docks import narrow_combos

BUDGET_UNITS = {"epochs": "--epochs", "minutes": "--time", "steps": "--steps"}


def _group(title: str, expanded: bool = True) -> tuple[QCollapsible, QFormLayout]:
    group = QCollapsible(title, collapsedIcon="▶")
    group.setDuration(0)  # no animation: screenshots and tests see the final layout
    group.layout().setContentsMargins(0, 2, 0, 2)  # collapsed groups sit close together
    group.layout().setSpacing(0)
    body = QWidget()
    form = QFormLayout(body)
    form.setContentsMargins(4, 6, 0, 0)
    group.addWidget(body)
    if expanded:
        group.expand(animate=False)
    else:
        group.collapse(animate=False)
    return group, form


def _row(*widgets, stretch_first: bool = False) -> QHBoxLayout:
    row = QHBoxLayout()
    for i, widget in enumerate(widgets):
        row.addWidget(widget, 1 if stretch_first and i == 0 else 0)
    return row


class FinetuneGui(QWidget):
    """Every control of the Fine-tune dock, laid out; subclasses connect them to layers and training."""

    def __init__(self, trainable_cards):
        super().__init__()
        self._build(trainable_cards)

    def _build(self, trainable_cards) -> None:
        from ..models.registry import TASK_LABELS

        self.project_edit = QLineEdit()
        self.project_edit.setPlaceholderText("choose a project folder")
        self.project_edit.setReadOnly(True)
        self.project_button = QPushButton("Choose...")
        self.image_combo, self.labels_combo = QComboBox(), QComboBox()
        self.autosave_check = QCheckBox("Auto-save every")
        self.autosave_check.setChecked(True)
        self.autosave_spin = QSpinBox()
        self.autosave_spin.setRange(5, 3600)
        self.autosave_spin.setValue(60)
        self.autosave_spin.setSuffix(" s")
        self.save_button = QPushButton("Save labels now")
        self.reviewed_button = QPushButton("Mark slice reviewed")
        self.reviewed_button.setToolTip("Mark the displayed slice reviewed: reviewed slices are trained on, "
                                        "empty ones as background")
        self.counts_label = QLabel()
        self.counts_label.setWordWrap(True)
        self.store_group, form = _group("Annotation store")
        form.addRow("Project", _row(self.project_edit, self.project_button, stretch_first=True))
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow(_row(self.autosave_check, self.autosave_spin))
        form.addRow(_row(self.save_button, self.reviewed_button))
        form.addRow(self.counts_label)

        self.model_combo = QComboBox()
        for card in trainable_cards:
            self.model_combo.addItem(f"{card.name}  [{TASK_LABELS[card.task]}]", card.id)
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(1, 100000)
        self.budget_spin.setValue(10)
        self.budget_unit = QComboBox()
        self.budget_unit.addItems(list(BUDGET_UNITS))
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setValue(4)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.encoder_check = QCheckBox("Also fine-tune the image encoder")
        self.encoder_check.setToolTip("Prompt models only; slower and needs more memory")
        self.scratch_check = QCheckBox("Start from a new network")
        self.scratch_check.setToolTip("Automatic models without published weights")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("new model id (default: <model>-ft-<date>)")
        self.options_group, form = _group("Training options")
        form.addRow("Model", self.model_combo)
        form.addRow("Budget", _row(self.budget_spin, self.budget_unit))
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Device", self.device_combo)
        form.addRow(self.encoder_check)
        form.addRow(self.scratch_check)
        form.addRow("Name", self.name_edit)

        self.train_button = QPushButton("Fine-tune on my labels")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.status_label = QLabel("Idle")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.canvas = self._make_plot()
        self.plot_group, form = _group("Loss and validation Dice")
        form.addRow(self.canvas)

        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 0, 0)
        for part in (self.store_group, self.options_group):
            column.addWidget(part)
        column.addLayout(_row(self.train_button, self.cancel_button, stretch_first=True))
        column.addWidget(self.bar)
        column.addWidget(self.status_label)
        column.addWidget(self.plot_group)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        # the controls take the dock's width: wider, the right edge (Cancel, the plot) fell behind a scroll bar
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        self.scroll_area = scroll
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)
        narrow_combos(self)

    def _make_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 2.4), layout="constrained")
        self.loss_axes = figure.add_subplot(111)
        self.dice_axes = self.loss_axes.twinx()
        canvas = FigureCanvasQTAgg(figure)
        canvas.setMinimumSize(160, 200)  # the figure's 4 inches are a preference, not a minimum
        return canvas

    def plot(self, metrics: dict) -> None:
        """Loss per step, validation Dice per epoch and the starting model's Dice (dotted)."""
        from matplotlib.ticker import MaxNLocator

        self.loss_axes.clear()
        self.dice_axes.clear()
        steps = metrics.get("loss_steps", [])
        if steps:
            self.loss_axes.plot([s for s, _ in steps], [v for _, v in steps], color="tab:blue", label="loss")
        history = [h for h in metrics.get("history", []) if h.get("val_dice") is not None]
        if history:
            self.dice_axes.plot([h["step"] for h in history], [h["val_dice"] for h in history], "o-",
                                color="tab:orange", label="validation Dice")
        if metrics.get("baseline_dice") is not None:
            self.dice_axes.axhline(metrics["baseline_dice"], color="tab:orange", linestyle=":", linewidth=1)
        self.loss_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.loss_axes.set_xlabel("step")
        self.loss_axes.set_ylabel("loss", color="tab:blue")
        self.dice_axes.yaxis.tick_right()  # clear() put the twin axis back on the left
        self.dice_axes.yaxis.set_label_position("right")
        self.dice_axes.set_ylabel("validation Dice", color="tab:orange")
        self.dice_axes.set_ylim(0, 1)
        self.canvas.draw_idle()
