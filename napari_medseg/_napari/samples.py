"""Sample data from images that ship inside installed packages: no download."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.image import Image
from .layers import image_layer_data


def sample_path(key: str) -> Path:
    """Files of the medical samples (also used by tests and `medseg demo`)."""
    if key == "ct":
        from pydicom.data import get_testdata_file

        return Path(get_testdata_file("CT_small.dcm"))
    if key == "head_ct":
        from pydicom.data import get_testdata_file

        return Path(get_testdata_file("693_J2KI.dcm"))
    if key == "brain_mr":
        import nilearn

        return Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    raise KeyError(key)


def _from_file(key: str, name: str, modality: str | None = None):
    from ..io import read_image

    image = read_image(sample_path(key))
    image.modality = modality or image.modality
    return [image_layer_data(image, name=name)]


def sample_ct():
    return _from_file("ct", "CT (pydicom CT_small)")


def sample_head_ct():
    return _from_file("head_ct", "head CT (pydicom 693_J2KI)")


def sample_brain_mr():
    return _from_file("brain_mr", "brain MR T1 (MNI152)", modality="MR")


def _photo(array: np.ndarray, modality: str) -> Image:
    rgb = array.ndim == 3
    return Image(array, (1.0, 1.0), (0.0, 0.0), np.eye(2), modality=modality,
                 intensity="rgb" if rgb else "raw", channel_axis=-1 if rgb else None)


def sample_fundus():
    from skimage import data

    return [image_layer_data(_photo(data.retina(), "RGB"), name="fundus (scikit-image retina)")]


def sample_microscopy():
    from skimage import data

    return [image_layer_data(_photo(data.cell(), "microscopy"), name="cell (scikit-image)")]
