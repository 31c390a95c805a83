"""Package list for the user's layout: training/ and resources/ live at the repository root
but install inside napari_medseg (see [tool.setuptools.package-dir] in pyproject.toml)."""
from setuptools import find_packages, setup


def subpackages(root: str, name: str) -> list[str]:
    return [name, *(f"{name}.{p}" for p in find_packages(root))]


setup(
    packages=[
        *subpackages("napari_medseg", "napari_medseg"),
        *subpackages("training", "napari_medseg.training"),
        *subpackages("resources", "napari_medseg.resources"),
    ]
)
