"""A searchable legend for multi-class labels layers: names, colours, show/hide by structure or group."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QLabel, QLineEdit, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget


def class_colors(classes: dict[int, str], colors: dict[int, list[int] | None] | None = None) -> dict[int, np.ndarray]:
    """RGBA in [0, 1] per label: the table's colours where known, a fixed palette otherwise."""
    from napari.utils.colormaps import label_colormap

    fallback = label_colormap(max(len(classes), 2), seed=0.5)
    result = {}
    for i, label in enumerate(sorted(classes)):
        if label == 0:
            continue
        rgb = (colors or {}).get(label)
        result[label] = np.array([*(np.asarray(rgb) / 255.0), 1.0]) if rgb else np.asarray(fallback.map(i + 1)).ravel()
    return result


class LabelLegend(QWidget):
    """Lists a labels layer's classes (grouped when groups are known); unticking hides a class."""

    def __init__(self, layer, classes: dict[int, str], colors=None, groups: dict[int, str | None] | None = None):
        super().__init__()
        self.layer = layer
        self.classes = {k: v for k, v in classes.items() if k != 0}
        self.colors = class_colors(classes, colors)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search structures...")
        self.tree = QTreeWidget()
        self.tree.setHeaderHidden(True)
        self.count = QLabel()
        layout = QVBoxLayout(self)
        layout.addWidget(self.search)
        layout.addWidget(self.tree)
        layout.addWidget(self.count)
        self._items: dict[int, QTreeWidgetItem] = {}
        self._fill(groups or {})
        self.search.textChanged.connect(self._filter)
        self.tree.itemChanged.connect(self._changed)
        self._apply()

    def _fill(self, groups: dict[int, str | None]) -> None:
        parents: dict[str, QTreeWidgetItem] = {}
        present = set(np.unique(np.asarray(self.layer.data)).tolist())
        for label, name in sorted(self.classes.items()):
            group = groups.get(label)
            parent = self.tree.invisibleRootItem()
            if group:
                if group not in parents:
                    parents[group] = QTreeWidgetItem(self.tree.invisibleRootItem(), [group])
                    parents[group].setFlags(parents[group].flags() | Qt.ItemFlag.ItemIsAutoTristate
                                            | Qt.ItemFlag.ItemIsUserCheckable)
                    parents[group].setCheckState(0, Qt.CheckState.Checked)
                parent = parents[group]
            text = f"{label}: {name}" + ("" if label in present else "  (not found)")
            item = QTreeWidgetItem(parent, [text])
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(0, Qt.CheckState.Checked)
            item.setData(0, Qt.ItemDataRole.UserRole, label)
            pixmap = QPixmap(12, 12)
            pixmap.fill(QColor.fromRgbF(*[float(c) for c in self.colors[label][:3]]))
            item.setIcon(0, QIcon(pixmap))
            self._items[label] = item
        self.tree.expandAll()
        self.count.setText(f"{len(present - {0})} of {len(self.classes)} structures present")

    def _filter(self, text: str) -> None:
        text = text.strip().lower()
        for item in self._items.values():
            item.setHidden(bool(text) and text not in item.text(0).lower())
        root = self.tree.invisibleRootItem()
        for i in range(root.childCount()):  # a group with no matching structure disappears too
            group = root.child(i)
            if group.childCount():
                group.setHidden(all(group.child(j).isHidden() for j in range(group.childCount())))

    def _changed(self, item, _column) -> None:
        self._apply()

    def visible_labels(self) -> list[int]:
        return [label for label, item in self._items.items() if item.checkState(0) == Qt.CheckState.Checked]

    def set_visible(self, labels) -> None:
        """Show exactly ``labels`` (used by scripts and tests)."""
        wanted = set(labels)
        self.tree.blockSignals(True)
        for label, item in self._items.items():
            item.setCheckState(0, Qt.CheckState.Checked if label in wanted else Qt.CheckState.Unchecked)
        self.tree.blockSignals(False)
        self._apply()

    def _apply(self) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        shown = set(self.visible_labels())
        transparent = np.zeros(4)
        color_dict = {None: transparent, 0: transparent}
        for label, rgba in self.colors.items():
            color_dict[label] = rgba if label in shown else transparent
        self.layer.colormap = DirectLabelColormap(color_dict=color_dict)
