"""PNG, JPEG and BMP through Pillow: RGB photos (endoscopy, dermoscopy) and grayscale images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImageReadError
from .declared import check_memory
from .image import Image

_GRAY_MODES = ("L", "I", "F", "I;16", "I;16B", "I;16L")
_BAND_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2}  # other modes: one byte per band


def read_photo(path: Path, fmt: str) -> Image:
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    try:
        with PILImage.open(path) as pil:  # refuses more than 2 x Image.MAX_IMAGE_PIXELS (a decompression bomb)
            mode = pil.mode
            width, height = pil.size
            bands = 1 if mode in _GRAY_MODES + ("1", "LA") else max(len(pil.getbands()), 3)  # others may become RGB
            check_memory(width * height * bands * _BAND_BYTES.get(mode, 1), path.name, copies=2)
            upright = ImageOps.exif_transpose(pil)  # phone/dermatoscope photos carry a rotation flag
            if mode in ("1", "LA"):
                upright = upright.convert("L")
            elif mode == "P" and _is_label_palette(upright):
                pass  # a VOC-style label mask: the palette indices are the labels
            elif mode not in _GRAY_MODES + ("RGB",):  # RGBA, palette, CMYK, YCbCr, ...
                upright = upright.convert("RGB")
            array = np.asarray(upright)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        raise ImageReadError(f"Cannot read {fmt.upper()} {path.name}: {exc}".splitlines()[0]) from None
    except Exception as exc:  # Pillow's decoders fail on damaged headers with many types
        raise ImageReadError(f"Cannot read {fmt.upper()} {path.name}: damaged file ({type(exc).__name__}: {exc})"
                             .splitlines()[0]) from None
    metadata = {"format": fmt, "pil_mode": mode, "original_dtype": str(array.dtype), "warnings": []}
    if mode.endswith(("A", "a")) or mode == "P" and "transparency" in pil.info:
        metadata["warnings"].append("transparency dropped")
    rgb = array.ndim == 3
    return Image(array, (1.0, 1.0), (0.0, 0.0), np.eye(2), modality="RGB" if rgb else "unknown",
                 intensity="rgb" if rgb else "raw", channel_axis=-1 if rgb else None, metadata=metadata)


def _is_label_palette(pil, max_labels: int = 64) -> bool:
    """Palette PNGs that use few indices are label masks (VOC style); others are photos."""
    colors = pil.getcolors(maxcolors=max_labels)
    return colors is not None


def write_png_labels(labels: np.ndarray, path: Path) -> None:
    from PIL import Image as PILImage

    PILImage.fromarray(labels).save(path, format="PNG")
