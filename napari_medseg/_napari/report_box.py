"""The "Lesion report" box of the Segment widget, for text-guided models (LLM-Swin-UMamba)."""
from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget

EXAMPLE = "Chest, lymph node, hilum, chest wall, prominent, axilla, axilla lymph node, fat-containing."


class ReportBox(QWidget):
    """A multi-line report editor; ``text()`` is what the model reads (an empty report is allowed)."""

    changed = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText(f"e.g. {EXAMPLE}")
        self.editor.setToolTip("Short description of the lesion from the report: location, type, attributes. "
                               "It steers the text-guided model; it is stored with the annotation.")
        self.editor.setMaximumHeight(90)
        self.editor.textChanged.connect(lambda: self.changed.emit(self.text()))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Lesion report"))
        layout.addWidget(self.editor)

    def text(self) -> str:
        return self.editor.toPlainText().strip()

    def set_text(self, text: str) -> None:
        self.editor.setPlainText(text)
