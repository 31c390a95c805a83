"""The Segment widget's layer glue: image and labels layers, prompt layers, model edits in napari's history."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import PromptError
from ...inference.intensity import CT_WINDOWS, window_limits
from ..combos import fill_combo
from ..layers import META_KEY, labels_layer_kwargs, placement, reference_image
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
        return layer

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
