"""npe2 writer: a labels layer saved in its source image's exact geometry, names and colours kept.

The file name picks the format: .dcm is a DICOM-SEG (the layer's source must be DICOM), .seg.nrrd a
3D Slicer segmentation, .nii.gz NIfTI with a label table, ..."""
from __future__ import annotations


def write_labels_layer(path: str, data, attributes: dict) -> list[str]:
    import numpy as np

    from ..io import write_labels
    from .layers import META_KEY, reference_image

    data = np.asarray(data)
    metadata = attributes.get("metadata") or {}
    like = reference_image(data, metadata, attributes)
    info = metadata.get(META_KEY, {})
    names = {int(k): v for k, v in (info.get("label_names") or {}).items()}
    colors = {int(k): v for k, v in (info.get("label_colors") or {}).items()}
    classes = {int(k): v for k, v in (info.get("label_classes") or {}).items()}
    written = [str(write_labels(data, like, path, label_names=names or None, label_colors=colors or None,
                                label_classes=classes or None))]
    from .recovery import note_saved

    note_saved(data)  # the layer is in a file now: no recovery copy needed
    return written
