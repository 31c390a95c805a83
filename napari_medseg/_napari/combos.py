"""Combo boxes that list layers and keep the user's choice when the list changes."""
from __future__ import annotations


def fill_combo(combo, names: list[str]) -> None:
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    if current in names:
        combo.setCurrentText(current)
    combo.blockSignals(False)
