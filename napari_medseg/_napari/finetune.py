"""The Fine-tune dock widget: keep every correction in an annotation store, then "Fine-tune on my labels".

Training runs in a separate process (``python -m napari_medseg.training``): the viewer stays
responsive, and closing it corrupts nothing (the process finishes and registers its model; Cancel
stops it after saving a resumable state). The widget follows the process through its
``metrics.json``: progress, ETA, and a live plot of the loss and the validation Dice.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
    QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from ..errors import MedsegError
from .combos import fill_combo
from .layers import META_KEY, labels_layer_kwargs, reference_image

BUDGET_UNITS = {"epochs": "--epochs", "minutes": "--time", "steps": "--steps"}


@dataclass
class TrainingRun:
    folder: Path
    model_id: str
    data_hash: str
    process: subprocess.Popen | None = None
    started: float = 0.0
    returncode: int | None = None


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


class FinetuneWidget(QWidget):
    model_trained = Signal(str)  # the registered model's id

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.store = None
        self.run: TrainingRun | None = None
        self._saved: dict[str, str] = {}  # labels layer name -> digest of what was last saved
        self._prompts_saved: dict[str, int] = {}  # labels layer name -> prompts already stored
        self._reviewed: dict[str, set[int]] = {}  # labels layer name -> slices marked reviewed
        self._plotted = None
        self._build()
        self.viewer.layers.events.inserted.connect(self._layer_inserted)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave)
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(500)
        self.poll_timer.timeout.connect(self._poll)
        self._autosave_changed()

    # ---- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        from ..models.registry import TASK_LABELS, list_cards
        from ..training import TRAINABLE_FAMILIES

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
        self.reviewed_button = QPushButton("Mark displayed slice reviewed")
        self.reviewed_button.setToolTip("Reviewed slices are trained on, empty ones as background")
        self.counts_label = QLabel()
        self.counts_label.setWordWrap(True)
        store_box = QGroupBox("Annotation store")
        form = QFormLayout(store_box)
        row = QHBoxLayout()
        row.addWidget(self.project_edit, 1)
        row.addWidget(self.project_button)
        form.addRow("Project", row)
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        row = QHBoxLayout()
        row.addWidget(self.autosave_check)
        row.addWidget(self.autosave_spin)
        form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.save_button)
        row.addWidget(self.reviewed_button)
        form.addRow(row)
        form.addRow(self.counts_label)

        self.model_combo = QComboBox()
        for card in list_cards():
            if card.family in TRAINABLE_FAMILIES:
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
        self.encoder_check = QCheckBox("Also fine-tune the image encoder (prompt models; slower)")
        self.scratch_check = QCheckBox("Start from a new network (automatic models without weights)")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("new model id (default: <model>-ft-<date>)")
        self.train_button = QPushButton("Fine-tune on my labels")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.status_label = QLabel("Idle")
        self.status_label.setWordWrap(True)
        train_box = QGroupBox("Fine-tune")
        form = QFormLayout(train_box)
        form.addRow("Model", self.model_combo)
        row = QHBoxLayout()
        row.addWidget(self.budget_spin)
        row.addWidget(self.budget_unit)
        form.addRow("Budget", row)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Device", self.device_combo)
        form.addRow(self.encoder_check)
        form.addRow(self.scratch_check)
        form.addRow("Name", self.name_edit)
        row = QHBoxLayout()
        row.addWidget(self.train_button, 1)
        row.addWidget(self.cancel_button)
        form.addRow(row)
        form.addRow(self.bar)
        form.addRow(self.status_label)
        self.canvas = self._make_plot()
        form.addRow(self.canvas)

        layout = QVBoxLayout(self)
        layout.addWidget(store_box)
        layout.addWidget(train_box)
        layout.addStretch(1)
        self.project_button.clicked.connect(self.choose_project)
        self.save_button.clicked.connect(lambda: self.save_labels(notify=True))
        self.reviewed_button.clicked.connect(self.mark_reviewed)
        self.autosave_check.toggled.connect(self._autosave_changed)
        self.autosave_spin.valueChanged.connect(self._autosave_changed)
        self.train_button.clicked.connect(self.start_training)
        self.cancel_button.clicked.connect(self.cancel_training)
        self.labels_combo.currentTextChanged.connect(lambda *_: self.refresh_counts())

    def _make_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.loss_axes = figure.add_subplot(111)
        self.dice_axes = self.loss_axes.twinx()
        canvas = FigureCanvasQTAgg(figure)
        canvas.setMinimumHeight(180)
        return canvas

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
        names = labels_layer.metadata.get(META_KEY, {}).get("label_names") or {}
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
                            prompts=new_prompts or None, report=reports[-1] if reports else None)
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

    # ---- training ---------------------------------------------------------------------------
    def select_model(self, model_id: str) -> bool:
        """Pick ``model_id`` as the model to fine-tune (False if it cannot be trained here)."""
        index = self.model_combo.findData(model_id)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)
        return index >= 0

    def command(self, run: TrainingRun) -> list[str]:
        card_id = self.model_combo.currentData()
        command = [sys.executable, "-m", "napari_medseg.training", "--from-store", str(self.store.folder),
                   "--model", card_id, "--out", str(run.folder), "--name", run.model_id,
                   "--device", self.device_combo.currentText(), "--batch-size", str(self.batch_spin.value()),
                   BUDGET_UNITS[self.budget_unit.currentText()], str(self.budget_spin.value())]
        if self.encoder_check.isChecked():
            command.append("--train-encoder")
        if self.scratch_check.isChecked():
            command.append("--scratch")
        return command

    def start_training(self) -> None:
        from ..training.register import check_model_id, default_model_id

        if self.running:
            return self._notify("warning", "Training is already running")
        if self.store is None:
            return self._notify("warning", "Choose a project folder first: training uses the labels saved there")
        self.save_labels()
        digest = self.store.data_hash()
        if not self.store.entries():
            return self._notify("warning", "The project holds no labels yet: label something and save it")
        card_id = self.model_combo.currentData()
        resumable = self.run is not None and self.run.data_hash == digest and \
            (self.run.folder / "last.pt").is_file() and self.run.model_id.startswith(card_id)
        if not resumable:
            try:
                model_id = check_model_id(self.name_edit.text().strip() or default_model_id(card_id))
            except MedsegError as exc:
                return self._notify("error", str(exc))
            self.run = TrainingRun(self.store.folder / "runs" / model_id, model_id, digest)
        self.run.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.run.folder / "training.log", "ab")
        self.run.process = subprocess.Popen(self.command(self.run), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.run.started, self.run.returncode = time.monotonic(), None
        self._plotted = None
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.bar.setRange(0, 0)
        self.status_label.setText(("Resuming" if resumable else "Starting") + f" {self.run.model_id}...")
        self.poll_timer.start()

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.process is not None and self.run.process.poll() is None

    def cancel_training(self) -> None:
        if self.running:
            self.run.process.terminate()  # the trainer saves a resumable state on SIGTERM
            self.status_label.setText("Cancelling (saving a resumable checkpoint)...")

    def wait(self, timeout_s: float = 600) -> int | None:
        """Block until the training process ends, keeping Qt alive (tests and scripts)."""
        from qtpy.QtCore import QCoreApplication

        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.05)
        self._poll()
        return None if self.run is None else self.run.returncode

    def _poll(self) -> None:
        from ..training.metrics import read_metrics

        if self.run is None:
            return
        metrics = read_metrics(self.run.folder / "metrics.json") or {}
        self._show_progress(metrics)
        if self.run.process is None or self.run.process.poll() is None:
            return
        self.poll_timer.stop()
        code = self.run.returncode = self.run.process.returncode
        self.run.process = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.bar.setRange(0, 100)
        if code == 0 and metrics.get("model_id"):
            self._finished(metrics)
        elif code == 0 and metrics.get("not_registered"):  # trained, but worse than the starting model
            self.status_label.setText(metrics["not_registered"].capitalize())
            self._notify("warning", metrics["not_registered"].capitalize())
        elif code == 130:
            self.status_label.setText("Cancelled. Press 'Fine-tune on my labels' again to resume from the last checkpoint.")
        else:
            tail = self._log_tail()
            self.status_label.setText(f"Training failed (exit code {code}): {tail}")
            self._notify("error", f"Training failed: {tail}")

    def _log_tail(self) -> str:
        try:
            lines = (self.run.folder / "training.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or ["no output"])[-1][-300:]

    def _show_progress(self, metrics: dict) -> None:
        if metrics.get("status") not in ("training", "saving", "trained", "finished"):
            return
        steps, step = metrics.get("steps"), metrics.get("step", 0)
        if steps:
            fraction = step / steps
        else:
            budget = self.budget_spin.value() * 60
            fraction = min(1.0, metrics.get("elapsed_s", 0) / budget)
        self.bar.setRange(0, 100)
        self.bar.setValue(int(100 * fraction))
        eta = metrics.get("eta_s")
        eta_text = f", ETA {eta // 60:.0f} min {eta % 60:.0f} s" if eta is not None else ""
        best = (metrics.get("best") or {}).get("dice")
        self.bar.setFormat(f"epoch {metrics.get('epoch', 0)}" + (f"/{metrics['epochs']}" if metrics.get("epochs") else "")
                           + f"  %p%{eta_text}")
        self.status_label.setText(f"{metrics['status'].capitalize()} {self.run.model_id}: loss "
                                  f"{metrics.get('loss', float('nan')):.4f}"
                                  + (f", best validation Dice {best:.3f}" if best is not None else ""))
        self._plot(metrics)

    def _plot(self, metrics: dict) -> None:
        key = (len(metrics.get("history", [])), len(metrics.get("loss_steps", [])))
        if key == self._plotted:
            return
        self._plotted = key
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
        self.loss_axes.set_xlabel("step")
        self.loss_axes.set_ylabel("loss", color="tab:blue")
        self.dice_axes.yaxis.tick_right()  # clear() put the twin axis back on the left
        self.dice_axes.yaxis.set_label_position("right")
        self.dice_axes.set_ylabel("validation Dice", color="tab:orange")
        self.dice_axes.set_ylim(0, 1)
        self.canvas.draw_idle()

    def _finished(self, metrics: dict) -> None:
        from ..models.registry import TASK_LABELS, get_card

        model_id = metrics["model_id"]
        card = get_card(model_id)
        if self.model_combo.findData(model_id) < 0:
            self.model_combo.addItem(f"{card.name}  [{TASK_LABELS[card.task]}]", model_id)
        self.model_combo.setCurrentIndex(self.model_combo.findData(model_id))
        self._select_in_segment_widgets(card)
        summary = metrics.get("summary", {})
        before, after = summary.get("baseline_dice"), summary.get("best_dice")
        scores = f" (validation Dice {before:.3f} -> {after:.3f})" if before is not None and after is not None else ""
        self.status_label.setText(f"Registered {model_id}{scores}. It is selected: run it on the image.")
        self.bar.setValue(100)
        self.bar.setFormat("done")
        self._notify("info", f"New model {model_id}{scores}")
        self.model_trained.emit(model_id)

    def _select_in_segment_widgets(self, card) -> None:
        """Offer the new model in any open Segment widget and select it there."""
        from ..models.registry import TASK_LABELS

        for widget in getattr(self.viewer.window, "dock_widgets", {}).values():
            combo = getattr(widget, "model_combo", None)
            if combo is None or widget is self:
                continue
            if combo.findData(card.id) < 0:
                combo.addItem(f"{card.name}  [{TASK_LABELS[card.task]}]", card.id)
            combo.setCurrentIndex(combo.findData(card.id))
