"""The object list: one row per object of the target labels layer (swatch, value, name, class), a thin view."""
from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QPushButton, QStyledItemDelegate, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

SWATCH, VALUE, NAME, CLASS = range(4)


class ClassDelegate(QStyledItemDelegate):
    """Edits a class cell with an editable combo box: the model's classes, or any text."""

    def __init__(self, choices: list[str], parent=None):
        super().__init__(parent)
        self.choices = choices

    def createEditor(self, parent, option, index):
        editor = QComboBox(parent)
        editor.setEditable(True)
        editor.addItems(self.choices)
        editor.lineEdit().setPlaceholderText("class")
        return editor

    def setEditorData(self, editor, index):
        editor.setCurrentText(index.data() or "")

    def setModelData(self, editor, model, index):
        model.setData(index, editor.currentText())


class ObjectListView(QWidget):
    renamed = Signal(int, str)
    category_changed = Signal(int, str)
    recolor_requested = Signal(int)
    delete_requested = Signal(int)
    selected = Signal(int)

    def __init__(self):
        super().__init__()
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["", "Label", "Name", "Class"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed)
        header = self.table.horizontalHeader()
        for column, mode in ((SWATCH, QHeaderView.ResizeMode.Fixed), (VALUE, QHeaderView.ResizeMode.ResizeToContents),
                             (NAME, QHeaderView.ResizeMode.Stretch), (CLASS, QHeaderView.ResizeMode.Stretch)):
            header.setSectionResizeMode(column, mode)
        self.table.setColumnWidth(SWATCH, 24)
        self.table.setMinimumHeight(110)
        self.table.setToolTip("Click a row to paint that object; double-click a name to rename it or a class "
                              "to choose one; click the swatch to recolour")
        self.recolor_button = QPushButton("Colour...")
        self.delete_button = QPushButton("Delete object")
        self.delete_button.setToolTip("Clear the object's voxels (one step in the layer's Ctrl+Z history)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.recolor_button)
        buttons.addWidget(self.delete_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self.class_delegate = ClassDelegate([], self.table)
        self.table.setItemDelegateForColumn(CLASS, self.class_delegate)
        self._filling = False
        self.table.itemChanged.connect(self._item_changed)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.cellClicked.connect(lambda row, column: column == SWATCH and self._emit(self.recolor_requested, row))
        self.recolor_button.clicked.connect(lambda: self._emit(self.recolor_requested, self.table.currentRow()))
        self.delete_button.clicked.connect(lambda: self._emit(self.delete_requested, self.table.currentRow()))

    def value_at(self, row: int) -> int | None:
        item = self.table.item(row, VALUE) if row >= 0 else None
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def row_of(self, value: int) -> int:
        return next((r for r in range(self.table.rowCount()) if self.value_at(r) == value), -1)

    def show_objects(self, objects, colors: dict, categories: list[str], current: int | None = None) -> None:
        """Fill the rows: ``objects`` are LabelObjects, ``colors`` RGBA per value, ``categories`` the class choices."""
        self._filling = True
        self.class_delegate.choices = categories
        self.table.setRowCount(len(objects))
        for row, obj in enumerate(objects):
            swatch = QTableWidgetItem()
            swatch.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            # a colour square, not a background, so that a selected row still shows its colour
            swatch.setData(Qt.ItemDataRole.DecorationRole, QColor.fromRgbF(*[float(c) for c in colors[obj.value][:3]]))
            value = QTableWidgetItem(str(obj.value))
            value.setData(Qt.ItemDataRole.UserRole, obj.value)
            value.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            self.table.setItem(row, SWATCH, swatch)
            self.table.setItem(row, VALUE, value)
            self.table.setItem(row, NAME, QTableWidgetItem(obj.name))
            self.table.setItem(row, CLASS, QTableWidgetItem(obj.category))
        row = self.row_of(current) if current is not None else -1
        if row >= 0:
            self.table.selectRow(row)
        self._filling = False

    def _emit(self, signal, row: int) -> None:
        value = self.value_at(row)
        if value is not None:
            signal.emit(value)

    def _item_changed(self, item) -> None:
        if self._filling:
            return
        if item.column() == NAME:
            self.renamed.emit(self.value_at(item.row()), item.text())
        elif item.column() == CLASS:
            self.category_changed.emit(self.value_at(item.row()), item.text())

    def _selection_changed(self) -> None:
        if not self._filling:
            self._emit(self.selected, self.table.currentRow())
