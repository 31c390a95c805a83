"""SimpleITK images <-> `Image`, progress/cancel for SimpleITK readers, readable ITK errors."""
from __future__ import annotations

import re

import numpy as np

from ..errors import Cancelled, ImageReadError
from ..progress import Progress
from .image import Image

# A 4th axis this short holds channels (e.g. the Medical Segmentation Decathlon's FLAIR/T1/T1gd/T2
# stacks); longer 4th axes are time series, which no model here takes.
MAX_CHANNELS_ON_4TH_AXIS = 4


def itk_reason(exc: Exception) -> str:
    """The informative tail of an ITK/SimpleITK exception, on one line."""
    text = " ".join(str(exc).split())
    text = text.rsplit("ERROR:", 1)[-1].rsplit("[nrrd]", 1)[-1]
    text = re.sub(r"\b\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    text = text.replace("Reason: No such file or directory", "").strip(" :")  # a stale errno: files are checked first
    return (text[:200] + "...") if len(text) > 200 else (text or "unknown SimpleITK error")


def execute(reader, what: str, progress=None, cancel=None, hint: str = ""):
    """Run a SimpleITK reader, forwarding its progress and aborting it when `cancel()` is true."""
    import SimpleITK as sitk

    tracker = Progress(100, f"Reading {what}", progress, cancel)
    cancelled = []

    def on_progress() -> None:
        try:
            tracker.step(max(0, int(reader.GetProgress() * 100) - tracker.done))
        except Cancelled:
            cancelled.append(True)
            reader.Abort()

    if progress is not None or cancel is not None:
        reader.AddCommand(sitk.sitkProgressEvent, on_progress)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        if cancelled:
            raise Cancelled(f"Reading {what} cancelled") from None
        raise ImageReadError(f"Cannot read {what}{hint}: {itk_reason(exc)}") from None
    finally:
        reader.RemoveAllCommands()


def check_orthonormal(direction: np.ndarray, what: str) -> None:
    if not np.allclose(direction.T @ direction, np.eye(len(direction)), atol=1e-3):
        raise ImageReadError(
            f"{what} has non-orthogonal (sheared) image axes; resample it to an orthogonal grid first "
            "(e.g. in 3D Slicer)"
        )


def image_from_sitk(img, what: str, **fields) -> Image:
    """Array (numpy order, channels last) and geometry of a 2-D, 3-D or short-4th-axis 4-D image."""
    import SimpleITK as sitk

    dim = img.GetDimension()
    array = sitk.GetArrayFromImage(img)
    spacing, origin = img.GetSpacing(), img.GetOrigin()
    direction = np.array(img.GetDirection()).reshape(dim, dim)
    channel_axis = -1 if img.GetNumberOfComponentsPerPixel() > 1 else None
    if dim == 4:
        volumes = img.GetSize()[3]
        if channel_axis is not None or volumes > MAX_CHANNELS_ON_4TH_AXIS:
            raise ImageReadError(
                f"{what} is 4-D with {volumes} volumes along its 4th axis (a time series?); "
                f"only up to {MAX_CHANNELS_ON_4TH_AXIS} channels are read: save one volume as a 3-D file"
            )
        array = np.moveaxis(array, 0, -1) if volumes > 1 else array[0]
        channel_axis = -1 if volumes > 1 else None
        spacing, origin, direction = spacing[:3], origin[:3], direction[:3, :3]
        fields.setdefault("metadata", {})["fourth_axis"] = "channels" if volumes > 1 else "single volume"
    elif dim not in (2, 3):
        raise ImageReadError(f"{what} is {dim}-D; only 2-D and 3-D images (plus channels) are read")
    check_orthonormal(direction, what)
    return Image(array, spacing, origin, direction, channel_axis=channel_axis, **fields)


def sitk_from_array(array: np.ndarray, like: Image):
    """A scalar SimpleITK image holding `array` (numpy order, spatial only) in `like`'s geometry."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    img.SetSpacing(like.spacing)
    img.SetOrigin(like.origin)
    img.SetDirection(tuple(like.direction.ravel()))
    return img
