"""The Segment widget's layer glue: image and labels layers, prompt layers, model edits in napari's history."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import PromptError
from ...inference.intensity import CT_WINDOWS, window_limits
from ..combos import fill_combo
from ..layers import META_KEY, labels_layer_kwargs, placement, reference_image
from .objects import ObjectTable
from .widget_gui import SegmentGUI

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


class SegmentControls(SegmentGUI):
    """Reads the viewer's layers and writes prompts and labels into them."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        super().__init__()
        self._objects_layer = None  # the labels layer whose objects the list shows
        self._seen_history = (0, 0)  # its undo/redo history lengths at the last scan
        self._cyclic_colormaps: dict = {}  # id(layer) -> its colours before an object was recoloured
        self._objects_timer = QTimer(self)  # one scan of the data per burst of edits
        self._objects_timer.setSingleShot(True)
        self._objects_timer.setInterval(100)
        self._objects_timer.timeout.connect(self.refresh_objects)

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
        self._attach_objects()

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
        # Ctrl+Z while drawing prompts steps through the target labels' history, as it would on that layer
        layer.bind_key("Control-Z", lambda _layer: self._labels_history("undo"), overwrite=True)
        layer.bind_key("Control-Shift-Z", lambda _layer: self._labels_history("redo"), overwrite=True)
        return layer

    def _target_labels(self):
        name = self.labels_combo.currentText()
        return self.viewer.layers[name] if name and name != NEW_LABELS and name in self.viewer.layers else None

    def _labels_history(self, step: str) -> None:
        layer = self._target_labels()
        if layer is not None:
            getattr(layer, step)()

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
        from ...inference.planes import box_from_rectangle

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

    def clear_prompts(self) -> None:
        for name in (BOX_LAYER, POINT_LAYER):
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.data = []
        self._box_count = 0

    # ---- objects ----------------------------------------------------------------------------
    def _attach_objects(self, *_) -> None:
        """Show the objects of the target labels layer and follow its edits (masks, strokes, undo, redo)."""
        layer = self._target_labels()
        if layer is self._objects_layer:
            return
        if self._objects_layer is not None:
            self._objects_layer.events.paint.disconnect(self._schedule_objects)
            self._objects_layer.events.set_data.disconnect(self._history_moved)
        self._objects_layer = layer
        if layer is not None:
            self._seen_history = self._history_state()
            layer.events.paint.connect(self._schedule_objects)
            layer.events.set_data.connect(self._history_moved)
        self.refresh_objects()

    def _history_state(self) -> tuple[int, int]:
        layer = self._objects_layer
        return len(layer._undo_history), len(layer._redo_history)

    def _history_moved(self, *_) -> None:
        """Undo and redo emit only set_data, as every slice change does: rescan only when the history moved."""
        if self._history_state() != self._seen_history:
            self._schedule_objects()

    def _schedule_objects(self, *_) -> None:
        self._seen_history = self._history_state()
        self._objects_timer.start()

    def objects(self) -> ObjectTable | None:
        layer = self._target_labels()
        if layer is None:
            return None
        return ObjectTable.from_metadata(layer.metadata.get(META_KEY, {}))

    def _store_objects(self, layer, table: ObjectTable, shown_colors: dict | None = None) -> None:
        info = layer.metadata.setdefault(META_KEY, {})
        table.store(info, shown_colors)

    def refresh_objects(self) -> None:
        """Re-read the values present, keep the table in the layer's metadata and redraw the list."""
        layer = self._target_labels()
        if layer is None:
            return self.object_list.show_objects([], {}, [])
        table = self.objects()
        table.sync(np.unique(np.asarray(layer.data)))
        self._apply_object_colors(layer, table)
        colors = {v: tuple(np.asarray(layer.colormap.map(v)).ravel()) for v in table.present}
        self._store_objects(layer, table, colors)  # the colours shown are the colours saved
        self.object_list.show_objects(table.shown(), colors, self._class_choices(), layer.selected_label)

    def _class_choices(self) -> list[str]:
        names = self.card.class_names()
        return [name for value, name in sorted(names.items()) if value != 0]

    def _apply_object_colors(self, layer, table: ObjectTable) -> None:
        """Objects with a chosen colour: a direct colormap that keeps every other object's cyclic colour."""
        from napari.utils.colormaps import CyclicLabelColormap, DirectLabelColormap

        custom = table.custom_colors()
        if not custom:
            return
        if isinstance(layer.colormap, CyclicLabelColormap):
            self._cyclic_colormaps[id(layer)] = layer.colormap  # the colours the other objects keep
        default = self._cyclic_colormaps.get(id(layer), layer.colormap)
        colors = {None: np.zeros(4), 0: np.zeros(4)}
        for value in {*table.present, *custom}:
            colors[value] = custom[value] if value in custom else np.asarray(default.map(value)).ravel()
        layer.colormap = DirectLabelColormap(color_dict=colors)

    def _edit_object(self, value: int, change) -> ObjectTable | None:
        layer, table = self._target_labels(), self.objects()
        if table is None or value not in table.objects:
            return None
        change(table)
        self._store_objects(layer, table)
        return table

    def rename_object(self, value: int, name: str) -> None:
        try:
            self._edit_object(value, lambda table: table.rename(value, name))
        except ValueError as exc:
            self._notify("warning", str(exc))
            self.refresh_objects()

    def set_object_class(self, value: int, category: str) -> None:
        self._edit_object(value, lambda table: table.set_category(value, category))

    def recolor_object(self, value: int, rgba) -> None:
        table = self._edit_object(value, lambda table: table.set_color(value, rgba))
        if table is not None:
            self.refresh_objects()

    def choose_object_color(self, value: int) -> None:
        from qtpy.QtGui import QColor
        from qtpy.QtWidgets import QColorDialog

        layer = self._target_labels()
        current = QColor.fromRgbF(*[float(c) for c in np.asarray(layer.colormap.map(value)).ravel()[:3]])
        color = QColorDialog.getColor(current, self, f"Colour of label {value}")
        if color.isValid():
            self.recolor_object(value, (color.redF(), color.greenF(), color.blueF(), 1.0))

    def delete_object(self, value: int) -> None:
        """Clear the object's voxels in one step of the layer's history (Ctrl+Z brings it back)."""
        layer = self._target_labels()
        if layer is None:
            return
        indices = np.nonzero(np.asarray(layer.data) == value)
        if indices[0].size:
            layer.data_setitem(indices, 0)
        self.refresh_objects()

    def select_object(self, value: int) -> None:
        """Paint and erase that object: it becomes the layer's selected label and the active layer."""
        layer = self._target_labels()
        if layer is not None:
            layer.selected_label = value
            self.viewer.layers.selection.active = layer
