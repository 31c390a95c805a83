"""npe2 writer: a labels layer saved in its source image's exact geometry, names and colours kept.

The file name picks the format: .dcm is a DICOM-SEG (the layer's source must be DICOM; the RTSTRUCT writer
contribution writes an RTSTRUCT instead), .seg.nrrd a 3D Slicer segmentation, .nii.gz NIfTI with a label table,
.zarr OME-Zarr labels (into the image's own OME-Zarr when that is the target; only changed chunks are written), ..."""
from __future__ import annotations


def write_rtstruct_layer(path: str, data, attributes: dict) -> list[str]:
    """The RTSTRUCT writer contribution (.dcm names DICOM-SEG otherwise)."""
    return write_labels_layer(path, data, attributes, fmt="rtstruct")


def write_labels_layer(path: str, data, attributes: dict, fmt: str | None = None) -> list[str]:
    import numpy as np

    from ..io import write_labels
    from .layers import META_KEY, reference_image

    if isinstance(data, list):  # a multiscale labels layer: its finest level
        data = data[0]
    zarr_target = path.lower().rstrip("/").endswith(".zarr")
    if not zarr_target:  # OME-Zarr is written chunk by chunk from whatever array the layer holds
        data = np.asarray(data)
    metadata = attributes.get("metadata") or {}
    like = reference_image(data, metadata, attributes)
    info = metadata.get(META_KEY, {})
    names = {int(k): v for k, v in (info.get("label_names") or {}).items()}
    colors = {int(k): v for k, v in (info.get("label_colors") or {}).items()}
    classes = {int(k): v for k, v in (info.get("label_classes") or {}).items()}
    if zarr_target:  # the layer's name names the label image (IMAGE.zarr/labels/NAME)
        import re

        from ..io.omezarr import write_zarr_labels

        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(attributes.get("name") or "segmentation")).lstrip(".")
        write_zarr_labels(data, like, path, names or None, label_colors=colors or None, name=name or "segmentation")
        written = [path]
    else:
        written = [str(write_labels(data, like, path, label_names=names or None, label_colors=colors or None,
                                    label_classes=classes or None, fmt=fmt))]
    from .recovery import note_saved

    note_saved(data)  # the layer is in a file now: no recovery copy needed
    return written
