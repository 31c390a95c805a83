"""The Fine-tune dock widget: keep every correction in an annotation store, then "Fine-tune on my labels".

Training runs in a separate process (``python -m napari_medseg.training``): the viewer stays
responsive, and closing it corrupts nothing (the process finishes and registers its model; Cancel
stops it after saving a resumable state). The widget follows the process through its
``metrics.json``: progress, ETA, and a live plot of the loss and the validation Dice.
"""
from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qtpy.QtCore import QTimer, Signal

from ..errors import MedsegError
from ..progress import format_duration
from .finetune_controls import FinetuneControls
from .finetune_gui import BUDGET_UNITS


@dataclass
class TrainingRun:
    folder: Path
    model_id: str
    data_hash: str
    process: subprocess.Popen | None = None
    started: float = 0.0
    returncode: int | None = None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def progress_texts(metrics: dict, model_id: str, budget_s: float) -> tuple[float, str, str]:
    """(fraction done, progress bar format, status line) for a running training's metrics.json.

    Until the first finite loss exists the status says "starting…" (the first poll used to read "loss nan")."""
    steps, step = metrics.get("steps"), metrics.get("step", 0)
    fraction = step / steps if steps else min(1.0, metrics.get("elapsed_s", 0) / budget_s)
    eta = metrics.get("eta_s")
    eta_text = f", ETA {format_duration(eta)}" if _finite(eta) else ""
    bar = (f"epoch {metrics.get('epoch', 0)}" + (f"/{metrics['epochs']}" if metrics.get("epochs") else "")
           + f"  %p%{eta_text}")
    loss = metrics.get("loss")
    seen = _finite(loss) or any(_finite(value) for _, value in metrics.get("loss_steps", []))
    best = (metrics.get("best") or {}).get("dice")
    status = f"{metrics['status'].capitalize()} {model_id}: " + (f"loss {loss:.4f}" if seen else "starting…")
    return fraction, bar, status + (f", best validation Dice {best:.3f}" if _finite(best) else "")


def result_text(model_id: str, summary: dict) -> str:
    """A finished run's model with the validation Dice before and after, and what it was measured on."""
    before, after = summary.get("baseline_dice"), summary.get("best_dice")
    if not (_finite(before) and _finite(after)):
        return model_id
    text = f"{model_id} (validation Dice {before:.3f} -> {after:.3f}"
    if summary.get("validation_on_training"):
        return text + " measured on the training image: label a second image for a held-out score)"
    return text + ")"


class FinetuneWidget(FinetuneControls):
    """The dock: layout (finetune_gui) and layer/store glue (finetune_controls), plus the training process."""

    model_trained = Signal(str)  # the registered model's id

    def __init__(self, napari_viewer):
        from ..models.registry import list_cards
        from ..training import TRAINABLE_FAMILIES

        super().__init__(napari_viewer, [card for card in list_cards() if card.family in TRAINABLE_FAMILIES])
        self.run: TrainingRun | None = None
        self._plotted = None
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(500)
        self.poll_timer.timeout.connect(self._poll)
        self.train_button.clicked.connect(self.start_training)
        self.cancel_button.clicked.connect(self.cancel_training)

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
        self.status_label.setText(("Resuming" if resumable else "Starting") + f" {self.run.model_id}…")
        self.store_group.collapse(animate=False)  # room for the progress and the plot on small screens
        self.options_group.collapse(animate=False)
        self.plot_group.expand(animate=False)
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
        fraction, bar, status = progress_texts(metrics, self.run.model_id, self.budget_spin.value() * 60)
        self.bar.setRange(0, 100)
        self.bar.setValue(int(100 * fraction))
        self.bar.setFormat(bar)
        self.status_label.setText(status)
        key = (len(metrics.get("history", [])), len(metrics.get("loss_steps", [])))
        if key != self._plotted:
            self._plotted = key
            self.plot(metrics)

    def _finished(self, metrics: dict) -> None:
        from ..models.registry import TASK_LABELS, get_card

        model_id = metrics["model_id"]
        card = get_card(model_id)
        if self.model_combo.findData(model_id) < 0:
            self.model_combo.addItem(f"{card.name}  [{TASK_LABELS[card.task]}]", model_id)
        self.model_combo.setCurrentIndex(self.model_combo.findData(model_id))
        self._select_in_segment_widgets(card)
        result = result_text(model_id, metrics.get("summary", {}))
        self.status_label.setText(f"Registered {result}. It is selected: run it on the image.")
        self.bar.setValue(100)
        self.bar.setFormat("done")
        self._notify("info", f"New model {result}")
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
