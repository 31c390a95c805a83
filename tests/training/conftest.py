"""Real labelled data without downloads: nilearn's MNI152 T1 with its white-matter map (> 50 %)."""
from pathlib import Path

import numpy as np
import pytest

from napari_medseg.io import read_image
from napari_medseg.io.image import Image

MNI = Path(__import__("nilearn").__file__).parent / "datasets" / "data"


@pytest.fixture(scope="session")
def mni():
    """(T1 image, white-matter labels) at full resolution (189 axial slices of 233 x 197)."""
    t1 = read_image(MNI / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    wm = read_image(MNI / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    t1.modality = "MR"
    return t1, (wm.array > 127).astype(np.uint8)


@pytest.fixture(scope="session")
def small_mni(mni):
    """Every other axial slice 40..138, in-plane every 3rd pixel: (50, 78, 66) voxels of 3 x 3 x 2 mm."""
    t1, labels = mni
    image = Image(np.ascontiguousarray(t1.array[40:140:2, ::3, ::3]).astype(np.float32), (3.0, 3.0, 2.0),
                  t1.origin, t1.direction, modality="MR")
    return image, np.ascontiguousarray(labels[40:140:2, ::3, ::3])


@pytest.fixture
def make_volume():
    return volume


def volume(shape=(6, 20, 24), seed=0) -> tuple[Image, np.ndarray]:
    """A small volume with a bright box labelled 1 and a dimmer one labelled 2."""
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 5, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[1:5, 4:10, 5:12] = 1
    labels[2:4, 12:17, 14:20] = 2
    array[labels == 1] += 80
    array[labels == 2] += 40
    return Image(array, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), np.eye(3), modality="MR"), labels
