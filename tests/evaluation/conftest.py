from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def write_volume():
    """Write a numpy (z, y, x) or (y, x) array with SimpleITK geometry (spacing in x, y, z order)."""
    import SimpleITK as sitk

    def write(path: Path, array: np.ndarray, spacing=None, origin=None) -> Path:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        if spacing is not None:
            image.SetSpacing([float(s) for s in spacing])
        if origin is not None:
            image.SetOrigin([float(o) for o in origin])
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))
        return path

    return write


@pytest.fixture
def ball():
    """A boolean ball (disc in 2-D) of ``radius`` voxels around ``centre`` in an array of ``shape``."""
    def make(shape, centre, radius) -> np.ndarray:
        grid = np.ogrid[tuple(slice(0, n) for n in shape)]
        return sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius ** 2

    return make


@pytest.fixture
def write_png():
    from PIL import Image

    def write(path: Path, array: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array)).save(path)
        return path

    return write

