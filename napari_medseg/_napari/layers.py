"""Image <-> napari layer data: world placement in, source geometry back out for saving."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.image import Image

META_KEY = "medseg"


def placement(image: Image) -> dict:
    """scale/translate for axis-aligned images with positive directions, a full affine otherwise."""
    if np.allclose(image.direction, np.eye(image.ndim), atol=1e-6):
        return {"scale": tuple(image.spacing[::-1]), "translate": tuple(image.origin[::-1])}
    return {"affine": image.napari_affine}


# what writers need beyond the grid: a single slice's 3-D place (NIfTI), the DICOM series (DICOM-SEG), where a
# gantry-tilted series' slices lie on the corrected grid (DICOM-SEG, RTSTRUCT)
_SOURCE_KEYS = ("slice_geometry", "series_key", "gantry_tilt")


def layer_metadata(image: Image, **extra) -> dict:
    return {
        META_KEY: {
            "geometry": image.geometry(),
            **{key: image.metadata[key] for key in _SOURCE_KEYS if key in image.metadata},
            "path": str(image.path) if image.path else None,
            "modality": image.modality,
            "intensity": image.intensity,
            **extra,
        }
    }


def image_layer_data(image: Image, name: str | None = None) -> tuple:
    """A napari LayerDataTuple for an image, placed in world coordinates (LPS mm)."""
    from ..inference.intensity import display_limits

    kwargs = {"name": name or (image.path.name if image.path else "image"), "metadata": layer_metadata(image), **placement(image)}
    data, levels = image.array, lazy_levels(image)
    if levels:  # a pyramid on disk: napari reads the tiles it shows, never the whole full resolution
        data, kwargs["multiscale"] = levels, True
    if image.is_rgb:
        kwargs["rgb"] = True
    elif image.channel_axis is not None:
        kwargs["channel_axis"] = image.channel_axis % image.array.ndim
        kwargs["name"] = [f"{kwargs['name']} [{i}]" for i in range(image.array.shape[image.channel_axis])]
        kwargs["metadata"] = [kwargs["metadata"]] * image.array.shape[image.channel_axis]
    else:
        kwargs["colormap"] = "gray"
        kwargs["contrast_limits"] = display_limits(np.asarray(levels[-1]) if levels else image.array, image.intensity)
    return data, kwargs, "image"


def lazy_levels(image: Image) -> list | None:
    """The resolution levels (finest first) of an image read lazily, when its array is their finest."""
    levels = image.metadata.get("levels")
    return levels if levels and levels[0] is image.array and len(levels) > 1 else None


def labels_layer_kwargs(image: Image, name: str, label_names: dict[int, str] | None = None) -> dict:
    """Labels share the image's placement and remember its geometry for saving."""
    return {"name": name, "metadata": layer_metadata(image, label_names=label_names or {}), **placement(image)}


def labels_layer_data(image: Image) -> tuple:
    """A label file (DICOM-SEG, seg.nrrd) as a labels layer with its names, classes and colours."""
    names = image.metadata.get("label_names") or {}
    colors = image.metadata.get("label_colors") or {}
    kwargs = labels_layer_kwargs(image, image.path.name if image.path else "labels", names)
    kwargs["metadata"][META_KEY]["label_colors"] = colors
    if "label_classes" in image.metadata:  # the objects' classes, as the Segment widget's object list shows them
        kwargs["metadata"][META_KEY]["label_classes"] = image.metadata["label_classes"]
    if colors:
        kwargs["colormap"] = label_colormap(colors)
    levels = lazy_levels(image)
    if levels:
        kwargs["multiscale"] = True
    return levels or image.array, kwargs, "labels"


def label_colormap(colors: dict[int, tuple]):
    """A napari colormap showing each value in its 0-255 RGB colour (the background transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    transparent = np.zeros(4)
    color_dict = {None: transparent, 0: transparent}
    color_dict.update({value: np.append(np.asarray(rgb) / 255, 1.0) for value, rgb in colors.items()})
    return DirectLabelColormap(color_dict=color_dict)


def reference_image(layer_data: np.ndarray, metadata: dict, attributes: dict | None = None) -> Image:
    """The geometry a labels layer was created in (or the best reconstruction from its transform)."""
    info = (metadata or {}).get(META_KEY)
    ndim = layer_data.ndim
    if info and len(info["geometry"]["shape"]) == ndim:
        geo = info["geometry"]
        return Image(layer_data, geo["spacing"], geo["origin"], np.reshape(geo["direction"], (ndim, ndim)),
                     modality=info.get("modality", "unknown"), path=Path(info["path"]) if info.get("path") else None,
                     metadata={key: info[key] for key in _SOURCE_KEYS if key in info})
    # a layer napari-medseg did not create: napari's own transform, read as LPS millimetres
    attributes = attributes or {}
    scale = np.asarray(attributes.get("scale", np.ones(ndim)), dtype=float)
    translate = np.asarray(attributes.get("translate", np.zeros(ndim)), dtype=float)
    affine = np.asarray(attributes.get("affine", np.eye(ndim + 1)), dtype=float)
    linear = affine[:ndim, :ndim] @ np.diag(scale)
    offset = affine[:ndim, :ndim] @ translate + affine[:ndim, ndim]
    spacing = np.linalg.norm(linear, axis=0)
    direction = (linear / spacing)[::-1, ::-1]
    return Image(layer_data, spacing[::-1], offset[::-1], direction)
