"""npe2 reader: every format `read_image` knows; None for anything else (npe2 contract).

OME-Zarr and pyramidal TIFF come as multiscale layers (nothing of the full resolution is read until shown);
an OME-Zarr's label images come with it as multiscale labels layers with their names and colours."""
from __future__ import annotations

from pathlib import Path

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".ima",
            ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".zarr")


def _readable(path: Path) -> bool:
    if path.is_dir():
        return True  # a DICOM folder; read_image says clearly if it holds no series
    return path.name.lower().endswith(SUFFIXES)


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    return read_layers if _readable(path) else None


def read_layers(path):
    """Layer data for napari (an RTSTRUCT: a labels layer on its series); a clear notification (not a traceback)
    when the file is bad."""
    from napari.utils.notifications import show_error

    from ..errors import MedsegError
    from ..io import read_image
    from ..io.rtstruct import is_rtstruct
    from .layers import image_layer_data, labels_layer_data

    if isinstance(path, list):
        path = path[0]
    try:
        if Path(path).is_file() and is_rtstruct(Path(path)):
            return [_rtstruct_layer(Path(path))]
        image = read_image(path)
    except MedsegError as exc:
        show_error(str(exc))
        return [(None,)]
    if image.metadata.get("format") in ("dicom-seg", "ome-zarr-labels") or \
            Path(path).name.lower().endswith(".seg.nrrd"):
        return [labels_layer_data(image)]
    layers = [image_layer_data(image)]
    if image.metadata.get("format") == "ome-zarr":
        from ..io.omezarr import read_zarr_labels

        for name in image.metadata.get("labels", []):
            try:
                labels = read_zarr_labels(path, name)
            except MedsegError as exc:
                show_error(str(exc))
                continue
            layer = labels_layer_data(labels)
            layer[1]["name"] = name
            layers.append(layer)
    return layers


def _rtstruct_layer(path: Path) -> tuple:
    """An RTSTRUCT filled on the series it was drawn on (found next to it) as a labels layer with its ROI names and
    colours, placed and remembered on that series, so that it overlays the series and saves back onto it."""
    from napari.utils.notifications import show_warning

    from ..io.rtstruct import read_rtstruct_onto, referenced_image
    from .layers import labels_layer_data

    series = referenced_image(path)
    contours = read_rtstruct_onto(path, series)
    for warning in contours.metadata["warnings"]:
        show_warning(f"{path.name}: {warning}")
    labels = series.with_array(contours.array, metadata={**series.metadata, **{
        key: contours.metadata[key] for key in ("label_names", "label_colors")}})
    data, kwargs, kind = labels_layer_data(labels)
    kwargs["name"] = path.name
    return data, kwargs, kind
