"""Medical image IO with exact geometry (Qt-free)."""
from .convert import convert_labels
from .image import Image
from .omezarr import read_zarr_labels, write_zarr_labels
from .read import list_dicom_series, read_image
from .write import write_labels

__all__ = ["Image", "convert_labels", "list_dicom_series", "read_image", "read_zarr_labels", "write_labels",
           "write_zarr_labels"]
