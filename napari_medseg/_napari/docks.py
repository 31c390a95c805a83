"""Dock widgets that fit small screens (1366x768): a scrolling body, collapsible groups, the view re-fitted."""
from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QComboBox, QFrame, QScrollArea, QVBoxLayout, QWidget


def scroll_body(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area and return the layout to fill (instead of ``QVBoxLayout(widget)``).

    The dock's minimum height is then that of one row, not of all its controls, so it fits any screen."""
    body = QWidget()
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the controls take the dock's width
    area.setWidget(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    widget.scroll_area = area
    return QVBoxLayout(body)


def narrow_combos(widget: QWidget, characters: int = 12) -> None:
    """Combo boxes as wide as the dock, not as their longest item (model and layer names are long)."""
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(characters)


def collapsible(title: str, content: QWidget, expanded: bool = True):
    """A group that folds to its title (superqt's QCollapsible) holding ``content``."""
    from superqt import QCollapsible

    group = QCollapsible(title)
    group.layout().setContentsMargins(0, 0, 0, 0)
    group.addWidget(content)
    if expanded:
        group.expand(animate=False)
    else:
        group.collapse(animate=False)
    return group


class _RefitOnShow(QObject):
    def __init__(self, viewer, parent: QWidget):
        super().__init__(parent)
        self.viewer = viewer

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Show:
            # after the dock has taken its room: the canvas is narrower, so fit the image to it again
            QTimer.singleShot(0, self.viewer.reset_view)
        return False


def refit_view_on_show(viewer, widget: QWidget) -> None:
    """Re-fit the viewer's camera each time ``widget`` (a dock's content) is shown."""
    widget.installEventFilter(_RefitOnShow(viewer, widget))
