"""Medical image IO with exact geometry (Qt-free)."""
from .image import Image
from .read import list_dicom_series, read_image
from .write import write_labels

__all__ = ["Image", "list_dicom_series", "read_image", "write_labels"]
