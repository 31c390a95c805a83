"""Text-guided lesion segmentation (LLM-Swin-UMamba): a typed report and a box or click give one lesion mask.

The DeepLesion model was trained by nnU-Net on 256x256 lesion-centred crops stored as 8-bit PNGs. A slice is
turned into what it saw:

1. Intensities. For a model trained on 8-bit images (``NaturalImage2DIO`` in its plans, as the DeepLesion
   model), CT in HU is windowed to 0..255 with ``window``; the default is [-160, 240] HU (W400/L40, soft tissue).
   The authors do not publish their window; this one maps the plans' lesion statistics of the 8-bit training
   crops (mean 108.6, median 115, 0.5-99.5 percentiles 1..215) to 10 HU, 20 HU and -158..177 HU, i.e. soft-
   tissue lesions, lymph nodes and lung nodules with partial volume, whereas DeepLesion's own [-1024, 3071] HU
   window would put the median lesion at 823 HU. Images not in HU that already hold 8-bit values (a DeepLesion
   PNG) are used as they are, others are scaled to 0..255 between their 0.5 and 99.5 percentiles. Models
   trained on other readers (e.g. NIfTI in HU) get the raw values.
2. Crop. 256x256 pixels centred on the box (or click) centre, at the image's own resolution; outside the image
   counts as 0 (air). A lesion box wider than 256/1.25 pixels gets a square crop 1.25 times its size, resized
   to 256 (and the mask back).
3. nnU-Net's preprocessing and prediction of that 256x256 image: crop to the non-zero bounding box, the
   plans' normalisation (CTNormalization: clip to the stored 0.5/99.5 percentiles, subtract the
   mean, divide by the std), zero padding back to 256 centred, forward with the report, optional mirroring
   (nnU-Net's default on GPU: all flips averaged as logits), softmax arg-max; outside the non-zero box is
   background. The text tower runs once per report (the network caches the pooled embedding).
4. The crop's mask goes back into the slice, and the slice into a label map of the image's shape.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import MedsegError, PromptError
from ..io.image import Image
from .precision import Precision, policy_dtype, precision_policy

LARGE_LESION_MARGIN = 1.25


@dataclass
class Crop:
    """A square window of ``side`` pixels of a plane, starting at (row, col); may reach outside the plane."""

    row: int
    col: int
    side: int

    @classmethod
    def around(cls, box, shape: tuple[int, int], size: int) -> "Crop":
        x0, y0, x1, y1 = box
        centre_row, centre_col = (y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5  # pixel edges at integers
        if not (-0.5 <= centre_row < shape[0] - 0.5 and -0.5 <= centre_col < shape[1] - 0.5):
            raise PromptError(f"The box centre ({centre_col + 0.5:.1f}, {centre_row + 0.5:.1f}) lies outside "
                              f"the {shape[1]}x{shape[0]} image")
        side = max(size, math.ceil(max(abs(x1 - x0), abs(y1 - y0)) * LARGE_LESION_MARGIN))
        return cls(math.floor(centre_row + 0.5) - side // 2, math.floor(centre_col + 0.5) - side // 2, side)

    def _overlap(self, shape) -> tuple[slice, slice, slice, slice]:
        r0, c0 = max(self.row, 0), max(self.col, 0)
        r1, c1 = min(self.row + self.side, shape[0]), min(self.col + self.side, shape[1])
        return (slice(r0, r1), slice(c0, c1),
                slice(r0 - self.row, r1 - self.row), slice(c0 - self.col, c1 - self.col))

    def take(self, plane: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((self.side, self.side), fill, dtype=np.float32)
        rows, cols, crop_rows, crop_cols = self._overlap(plane.shape)
        out[crop_rows, crop_cols] = plane[rows, cols]
        return out

    def put(self, mask: np.ndarray, target: np.ndarray, value: int) -> None:
        rows, cols, crop_rows, crop_cols = self._overlap(target.shape)
        target[rows, cols][mask[crop_rows, crop_cols]] = value


def _plane(image: Image, z: int | None) -> np.ndarray:
    array = image.array
    if image.ndim == 3:
        if z is None:
            raise PromptError("For a volume, give the slice index as the box's fifth number (x0,y0,x1,y1,z)")
        if not 0 <= z < image.spatial_shape[0]:
            raise PromptError(f"Slice {z} is outside the volume (0..{image.spatial_shape[0] - 1})")
        array = array[z]
    if image.is_rgb:
        return array[..., :3].astype(np.float32).mean(axis=-1)
    if image.channel_axis is not None:
        raise PromptError(f"Text-guided lesion models need a grey image; this one has {array.shape[-1]} channels")
    return array


def model_pixels(plane: np.ndarray, image: Image, preprocessing: dict, window) -> tuple[np.ndarray, float]:
    """The slice's values as the model's training reader delivered them, and the value of 'outside'."""
    from .intensity import display_limits, to_uint8

    if not preprocessing.get("eight_bit"):
        return plane.astype(np.float32), float(np.min(plane))
    if window is not None or image.intensity == "HU":
        limits = tuple(window) if window is not None else tuple(preprocessing["ct_window"])
        return to_uint8(plane, limits).astype(np.float32), 0.0
    if plane.dtype == np.uint8 or (plane.min() >= 0 and plane.max() <= 255):
        return plane.astype(np.float32), 0.0
    return to_uint8(plane, display_limits(plane, image.intensity)).astype(np.float32), 0.0


def normalize(values: np.ndarray, scheme: dict) -> np.ndarray:
    """nnU-Net's normalisation of one channel (the plans' scheme, as automatic 2-D prediction applies it)."""
    from .auto2d import normalize as normalize_channels

    mask = None
    if scheme.get("use_mask"):  # nnU-Net's non-zero mask, holes filled
        from scipy.ndimage import binary_fill_holes

        mask = binary_fill_holes(values != 0)
    return normalize_channels(values.astype(np.float32)[None], mask, [scheme])[0]


def nonzero_box(values: np.ndarray) -> tuple[slice, slice] | None:
    """nnU-Net's crop_to_nonzero bounding box, or None if all values are zero.

    nnU-Net fills holes in the non-zero mask first; holes lie inside the mask's extent, so the box is the same.
    """
    nonzero = values != 0
    rows, cols = np.nonzero(nonzero.any(axis=1))[0], np.nonzero(nonzero.any(axis=0))[0]
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def segment_function(network):
    """``network.segment``, replayed from CUDA graphs on CUDA inputs (one capture per input signature).

    At 256^2 the forward is bound by its ~1000 kernel launches, not by arithmetic: on an H100 one slice
    takes 18-31 ms eagerly in fp16 and 4.5 ms replayed.
    """
    from .cuda_graphs import network_graphs

    return network_graphs(network, "segment")


def mirrored_logits(network, x, lang_feat, axes) -> "torch.Tensor":
    """Logits averaged over all flips of ``axes`` (nnU-Net's mirroring), in one batch."""
    import torch

    combos = [()] + [c for n in range(1, len(axes) + 1) for c in itertools.combinations([a + 2 for a in axes], n)]
    batch = torch.cat([x.flip(c) if c else x for c in combos])
    logits = segment_function(network)(batch, lang_feat).float()
    return sum(logits[i:i + 1].flip(c) if c else logits[i:i + 1] for i, c in enumerate(combos)) / len(combos)


def predict_crop(loaded, pixels: np.ndarray, report: str, *, mirror: bool, device,
                 precision: str = "faithful") -> np.ndarray:
    """Lesion mask (bool, size x size) of one model-ready square crop, as nnU-Net predicts it (float32, or
    under the GPU's autocast type for ``precision`` "fast")."""
    import torch

    preprocessing = loaded.preprocessing
    size = int(preprocessing["crop_size"])
    box = nonzero_box(pixels)
    mask = np.zeros((size, size), dtype=bool)
    if box is None:
        return mask
    values = normalize(pixels[box], preprocessing["normalization"][0]).astype(np.float32)
    padded = np.zeros((size, size), dtype=np.float32)
    below = [(size - n) // 2 for n in values.shape]  # pad_nd_image: the remainder goes after
    inner = tuple(slice(b, b + n) for b, n in zip(below, values.shape))
    padded[inner] = values
    network = loaded.network.eval()
    x = torch.from_numpy(padded)[None, None].to(device)
    axes = preprocessing.get("mirror_axes", []) if mirror else []
    run = Precision(device, policy_dtype(precision, None, device))
    with torch.no_grad():
        logits = run(lambda: mirrored_logits(network, x, network.encode_report(report), axes))[0]
    if preprocessing.get("output") == "sigmoid":
        foreground = (torch.sigmoid(logits) > 0.5).any(dim=0)
    else:
        foreground = logits.argmax(dim=0) != 0
    mask[box] = foreground.cpu().numpy()[inner]
    return mask


def predict_text2d(loaded, image: Image, report: str, *, box, window=None, label: int = 1, device=None,
                   mirror: bool | None = None, precision: str = "faithful") -> np.ndarray:
    """Label map (``image.spatial_shape``) with ``label`` on the lesion that ``box`` points at and ``report`` describes.

    ``box`` is (x0, y0, x1, y1) in pixels of the slice (pixel edges at integers, as box prompts), plus z (the slice
    index along the first axis) for volumes; a click is a box of zero size. ``window`` (low, high) overrides the
    CT window; ``mirror`` (nnU-Net's test-time flips) defaults to on for CUDA and off elsewhere (4x the work).
    ``precision``: "faithful" (float32, default) or "fast" (the GPU's autocast type).
    """
    import torch

    from ..device import resolve_device

    if loaded.task != "text2d":
        raise MedsegError(f"{loaded.family} is not a text-guided model")
    precision = precision_policy(precision)
    if not isinstance(report, str):
        raise PromptError("The lesion report must be text")
    if len(loaded.preprocessing.get("channels", [])) != 1:
        raise MedsegError("Text-guided prediction supports 1-channel models only")
    if box is None or len(box) not in (4, 5):
        raise PromptError("Text-guided models need a box x0,y0,x1,y1 (plus z for volumes) or a click")
    if label < 1:
        raise PromptError(f"The label value must be at least 1, got {label}")
    z = int(box[4]) if len(box) == 5 else None
    if image.ndim == 2 and z not in (None, 0):
        raise PromptError(f"A 2-D image has no slice {z}")
    plane = _plane(image, z if image.ndim == 3 else None)
    pixels, outside = model_pixels(plane, image, loaded.preprocessing, window)
    size = int(loaded.preprocessing["crop_size"])
    crop = Crop.around([float(v) for v in box[:4]], plane.shape[:2], size)
    patch = crop.take(pixels, outside)
    if crop.side != size:
        from skimage.transform import resize

        patch = resize(patch, (size, size), order=1, preserve_range=True, anti_aliasing=True).astype(np.float32)

    if device is None:
        device = loaded.info.get("device") or next(loaded.network.parameters()).device
    device = resolve_device(str(device))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if next(loaded.network.parameters()).device != device:
        loaded.to(device)
        loaded.info["device"] = str(device)
    mask = predict_crop(loaded, patch, report, mirror=device.type == "cuda" if mirror is None else mirror,
                        device=device, precision=precision)
    if crop.side != size:
        from skimage.transform import resize

        mask = resize(mask.astype(np.float32), (crop.side, crop.side), order=1) > 0.5

    labels = np.zeros(image.spatial_shape, dtype=np.uint8 if label < 256 else np.uint16)
    crop.put(mask, labels if image.ndim == 2 else labels[z], label)
    return labels
