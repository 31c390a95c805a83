"""Box-prompted 2-D segmentation with SAM-family models (SAM, MedSAM, LiteMedSAM, LVM-Med ViT).

``BoxPredictor`` prepares a slice exactly as the model's authors do, caches its image embedding
(so further boxes on the same slice run only the prompt encoder and mask decoder) and returns
masks in the slice's own pixels. ``BoxPredictor.propagate`` carries a slice mask through a volume.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import MedsegError, PromptError
from .intensity import to_uint8
from .precision import precision_policy

# --------------------------------------------------------------------------- image conversion


def to_uint8_rgb(image: np.ndarray, display_range=None) -> np.ndarray:
    """(H, W, 3) uint8 from a grey (H, W) or colour (H, W, 3|4) slice.

    ``display_range`` (low, high) maps to 0..255 with clipping; without it uint8 stays as it is and
    other types are min-max scaled.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        image = image[..., :3] if image.shape[-1] > 1 else image[..., 0]
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 2:
        raise MedsegError(f"Box prompts need a 2-D grey or RGB slice, got an array of shape {image.shape}")
    if display_range is not None or image.dtype != np.uint8:
        values = np.nan_to_num(image.astype(np.float32, copy=False))
        image = to_uint8(values, display_range or (float(values.min()), float(values.max())))
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def _area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of OpenCV's INTER_AREA along one axis."""
    weights = np.zeros((dst, src))
    scale = src / dst
    if scale >= 1:  # each output pixel averages the input cells it covers
        for d in range(dst):
            start, end = d * scale, (d + 1) * scale
            width = min(scale, src - start)
            first, last = int(np.ceil(start)), min(int(np.floor(end)), src - 1)
            first = min(first, last)
            if first - start > 1e-3:
                weights[d, first - 1] = (first - start) / width
            weights[d, first:last] = 1.0 / width
            if end - last > 1e-3:
                weights[d, last] = min(end - last, 1.0, width) / width
    else:  # enlarging: pixel replication with linear blending where a source edge falls inside
        for d in range(dst):
            s = int(np.floor(d * scale))
            frac = (d + 1) - (s + 1) / scale
            frac = 0.0 if frac <= 0 else frac - np.floor(frac)
            if s >= src - 1:
                s, frac = src - 1, 0.0
            weights[d, s] += 1 - frac
            if frac:
                weights[d, s + 1] += frac
    return weights


def area_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W, C) image like ``cv2.resize(..., interpolation=cv2.INTER_AREA)``."""
    (h, w), (new_h, new_w) = image.shape[:2], size
    if (h, w) == (new_h, new_w):
        return image.copy()
    rows, cols = _area_weights(h, new_h), _area_weights(w, new_w)
    if new_h > h or new_w > w:  # OpenCV's linear pass in 11-bit fixed point, bit for bit: rows first
        # (exact integers), then each of the two vertical taps as (row >> 4) * weight >> 16, then (sum + 2) >> 2
        rows, cols = np.rint(rows * 2048).astype(np.int64), np.rint(cols * 2048).astype(np.int64)
        horizontal = np.einsum("lk,ikc->ilc", cols, image.astype(np.int64), optimize=True) >> 4
        first = np.argmax(rows != 0, axis=1)
        second = np.minimum(first + 1, h - 1)
        weight0 = rows[np.arange(new_h), first]
        weight1 = np.where(second > first, rows[np.arange(new_h), second], 0)
        out = ((horizontal[first] * weight0[:, None, None] >> 16)
               + (horizontal[second] * weight1[:, None, None] >> 16) + 2) >> 2
    else:  # torch's matrix products: numpy's OpenBLAS threads would keep spinning on the cores the
        # image encoder needs next (60 ms slower embeddings on a 2-core CPU)
        import torch

        vertical = torch.from_numpy(rows.astype(np.float32)) @ torch.from_numpy(image.astype(np.float32).reshape(h, -1))
        out = torch.einsum("lk,ikc->ilc", torch.from_numpy(cols.astype(np.float32)), vertical.reshape(new_h, w, -1))
        out = out.numpy()
        halving = (h, w) == (2 * new_h, 2 * new_w)  # OpenCV's 2x2 fast path rounds halves up
        out = np.floor(out + 0.5) if halving else np.rint(out)
    return np.clip(out, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- family profiles

class _Profile:
    """How one family turns a slice into encoder input and decoder logits into a mask."""

    def __init__(self, network, size: int):
        self.network, self.size = network, size

    def encoder_input(self, rgb: np.ndarray):
        """(1, 3, S, S) float tensor and the (h, w) of the image inside it."""
        raise NotImplementedError

    def points(self, xy: np.ndarray, hw) -> np.ndarray:
        """Pixel (x, y) coordinates mapped into the model frame."""
        h, w = hw
        return xy * np.array([self.size / w, self.size / h])

    def box(self, box: np.ndarray, hw) -> np.ndarray:
        return self.points(box.reshape(2, 2), hw).reshape(4)

    def mask(self, logits, input_hw, hw):
        """Boolean (H, W) tensor from (1, 1, 256, 256) low-resolution logits."""
        import torch.nn.functional as F

        probabilities = F.interpolate(logits.sigmoid(), size=hw, mode="bilinear", align_corners=False)
        return probabilities[0, 0] > 0.5

    def _tensor(self, array: np.ndarray):
        """(1, 3, H, W) float32 on the network's device (uint8 travels as bytes)."""
        import torch

        device = next(self.network.parameters()).device
        if array.dtype != np.uint8:
            array = array.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(array)).to(device).permute(2, 0, 1)[None].float()


class _SamProfile(_Profile):
    """SamPredictor: longest side to 1024 (PIL bilinear), ImageNet mean/std, pad; logits > 0."""

    def __init__(self, network, size):
        from segment_anything.utils.transforms import ResizeLongestSide

        super().__init__(network, size)
        self.transform = ResizeLongestSide(size)

    def encoder_input(self, rgb):
        resized = self.transform.apply_image(rgb)
        return self.network.preprocess(self._tensor(resized)), resized.shape[:2]

    def points(self, xy, hw):
        return self.transform.apply_coords(xy, hw)

    def mask(self, logits, input_hw, hw):
        return self.network.postprocess_masks(logits, input_hw, hw)[0, 0] > self.network.mask_threshold


class _MedSamProfile(_Profile):
    """MedSAM_Inference.py: bicubic 1024x1024 (uint8), min-max to [0, 1], no mean/std."""

    def encoder_input(self, rgb):
        from skimage.transform import resize

        resized = resize(rgb, (self.size, self.size), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
        scaled = (resized - resized.min()) / np.clip(float(resized.max()) - resized.min(), 1e-8, None)
        return self.network.preprocess(self._tensor(scaled)), (self.size, self.size)


class _LiteMedSamProfile(_Profile):
    """CVPR24_LiteMedSAM_infer.py: INTER_AREA longest side 256, min-max [0, 1], pad; integer boxes."""

    def _resized_hw(self, hw):
        scale = self.size / max(hw)
        return int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5)

    def encoder_input(self, rgb):
        resized = area_resize(rgb, self._resized_hw(rgb.shape[:2])).astype(np.float64)
        scaled = (resized - resized.min()) / np.clip(resized.max() - resized.min(), 1e-8, None)
        padded = np.zeros((self.size, self.size, 3))
        padded[: scaled.shape[0], : scaled.shape[1]] = scaled
        return self._tensor(padded), scaled.shape[:2]

    def points(self, xy, hw):
        return xy * (self.size / max(hw))

    def box(self, box, hw):
        return np.floor(box * (self.size / max(hw)))  # the authors truncate with int()

    def mask(self, logits, input_hw, hw):
        import torch.nn.functional as F

        cropped = logits[..., : input_hw[0], : input_hw[1]]
        return F.interpolate(cropped, size=hw, mode="bilinear", align_corners=False)[0, 0].sigmoid() > 0.5


class _LvmMedProfile(_Profile):
    """LVM-Med (dataset.py + LVMMed_SAM_2d.py): BGR, nearest 1024x1024, min-max 0..255, ImageNet mean/std."""

    def encoder_input(self, rgb):
        from skimage.transform import resize

        bgr = rgb[..., ::-1]  # cv2.imread order, kept by the authors
        resized = resize(bgr, (self.size, self.size), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
        low, high = float(resized.min()), float(resized.max())
        scaled = ((resized - low) * (1 / (0.01 + high - low) * 255)).astype(np.uint8)
        return self.network.preprocess(self._tensor(scaled)), (self.size, self.size)


PROFILES = {"sam": _SamProfile, "medsam": _MedSamProfile, "lite_medsam": _LiteMedSamProfile,
            "lvm_med_vit": _LvmMedProfile}


# --------------------------------------------------------------------------- embedding cache

@dataclass
class Embedding:
    features: object  # (1, C, 64, 64) float32 tensor on the predictor's device
    input_hw: tuple[int, int]  # image extent inside the model frame
    image_hw: tuple[int, int]  # the slice's own size


class EmbeddingCache:
    """Least-recently-used image embeddings keyed by (content hash, family, weights sha256, preprocessing,
    key, precision).

    One cache may serve several predictors when their models were loaded from files (sha256 known).
    """

    def __init__(self, max_items: int = 32):
        self.max_items = max_items
        self._items: OrderedDict[tuple, Embedding] = OrderedDict()

    def get(self, key: tuple) -> Embedding | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: tuple, value: Embedding) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


def content_hash(image: np.ndarray, display_range=None) -> str:
    array = np.ascontiguousarray(image)
    digest = hashlib.sha1(array.view(np.uint8).reshape(-1), usedforsecurity=False)
    digest.update(repr((array.shape, array.dtype.str, display_range)).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- predictor

class BoxPredictor:
    """Box (and point) prompts on 2-D slices with a loaded SAM-family model.

    ``precision``: "faithful" (default: float32, the authors' computation) or "fast" (the image encoder
    under bfloat16 autocast where the hardware computes it natively: CUDA GPUs with bf16, CPUs with
    AVX512-BF16/AMX; float32 elsewhere; prompt encoder and decoder stay float32; can change masks, see
    the README's precision section). The earlier names "fp32" and "bf16" mean "faithful" and "fast".
    ``compile`` runs the image encoder and the mask decoding through ``torch.compile`` (slow first calls).
    The network is moved to ``device``. ``store`` (an `embedding_cache.EmbeddingStore`) keeps embeddings
    on disk across sessions for models whose weights' sha256 is known.
    """

    def __init__(self, loaded, device=None, precision: str = "faithful", cache: EmbeddingCache | None = None,
                 compile: bool = False, store=None):
        import torch

        from ..models.sam_family import encoder_for_inference
        from .cuda_graphs import GraphCache

        if loaded.task != "box2d" or loaded.preprocessing.get("profile") not in PROFILES:
            raise MedsegError(f"{loaded.family} is not a box-prompted model")
        self.loaded = loaded
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = precision_policy(precision)
        self._bf16 = self.precision == "fast" and native_bf16(self.device)
        network = loaded.network.to(self.device).eval()
        encoder = encoder_for_inference(network)
        self._encode = torch.compile(encoder) if compile else encoder
        self._decode = torch.compile(self._decode_logits) if compile else self._decode_logits
        self.network = network
        with torch.inference_mode():
            self._dense_pe = network.prompt_encoder.get_dense_pe()
        self.profile = PROFILES[loaded.preprocessing["profile"]](network, int(loaded.preprocessing["image_size"]))
        self.cache = cache if cache is not None else EmbeddingCache()
        self.store = store if loaded.sha256 else None  # without the weights' hash a stored entry has no owner
        self._preprocessing = json.dumps(loaded.preprocessing, sort_keys=True, default=str)
        self.embedding: Embedding | None = None
        self.cache_hit = False
        # the decoder is a chain of ~150 small kernels: on CUDA a graph replays them with one launch
        self._box_masks = GraphCache(self._box_mask)

    # ---- image
    def set_image(self, image2d: np.ndarray, key=None, display_range=None) -> None:
        """Embed a slice (or reuse its cached embedding). ``key`` distinguishes equal slices if wanted."""
        cache_key = (content_hash(image2d, display_range), self.loaded.family, self.loaded.sha256,
                     self._preprocessing, key, self.precision)
        embedding = self.cache.get(cache_key)
        if embedding is None and self.store is not None:
            embedding = self.store.get(cache_key, self.device)
            if embedding is not None:
                self.cache.put(cache_key, embedding)
        self.cache_hit = embedding is not None
        if embedding is None:
            embedding = self._embed(to_uint8_rgb(image2d, display_range))
            self.cache.put(cache_key, embedding)
            if self.store is not None:
                self.store.put(cache_key, embedding)
        self.embedding = embedding

    def _embed(self, rgb: np.ndarray) -> Embedding:
        import torch

        with torch.inference_mode():
            x, input_hw = self.profile.encoder_input(rgb)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16):
                features = self._encode(x.contiguous(memory_format=torch.channels_last))
        return Embedding(features.float(), tuple(input_hw), tuple(rgb.shape[:2]))

    # ---- prompts
    def predict(self, box=None, points=None, point_labels=None) -> np.ndarray:
        """Boolean (H, W) mask for a box (x0, y0, x1, y1) and/or points (x, y) in the slice's pixels.

        Point labels: 1 = object, 0 = background. Boxes are clipped to the slice.
        """
        import torch

        if self.embedding is None:
            raise PromptError("No slice is set: call set_image() before predict()")
        hw = self.embedding.image_hw
        boxes = None if box is None else torch.as_tensor(self.profile.box(clip_box(box, hw), hw), dtype=torch.float32)
        point_prompt = None
        if points is not None and len(points):
            xy = check_points(np.asarray(points, dtype=np.float64).reshape(-1, 2), hw, point_labels)
            labels = np.ones(len(xy)) if point_labels is None else np.asarray(point_labels, dtype=np.float64).reshape(-1)
            coords = torch.as_tensor(self.profile.points(xy, hw), dtype=torch.float32)[None].to(self.device)
            point_prompt = (coords, torch.as_tensor(labels, dtype=torch.int64)[None].to(self.device))
        if boxes is None and point_prompt is None:
            raise PromptError("Give a box or at least one point")
        # a lone point is ambiguous: take SAM's best of three masks, as SamPredictor recommends
        multimask = boxes is None and len(point_prompt[0][0]) == 1
        if point_prompt is None:  # the common case: replayed from a CUDA graph per slice geometry on CUDA
            with torch.inference_mode():
                mask = self._box_masks(self.embedding.features, boxes.view(1, 1, 4).to(self.device),
                                       key=(self.embedding.input_hw, hw))
            return mask.cpu().numpy()
        with torch.inference_mode():
            boxes = None if boxes is None else boxes.view(1, 1, 4).to(self.device)
            logits = self._decode(self.embedding.features, point_prompt, boxes, multimask)
            mask = self.profile.mask(logits, self.embedding.input_hw, hw)
        return mask.cpu().numpy()

    def _box_mask(self, features, box):
        """(H, W) boolean mask tensor of the current slice for a (1, 1, 4) box in the model frame."""
        embedding = self.embedding
        logits = self._decode(features, None, box, False)
        return self.profile.mask(logits, embedding.input_hw, embedding.image_hw)

    def _decode_logits(self, features, points, boxes, multimask: bool):
        """(1, 1, 256, 256) low-resolution logits of the best mask for the prompts."""
        sparse, dense = self.network.prompt_encoder(points=points, boxes=boxes, masks=None)
        logits, quality = self.network.mask_decoder(
            image_embeddings=features, image_pe=self._dense_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=multimask)
        if not multimask:
            return logits
        return logits.index_select(1, quality[0].argmax().view(1))  # no host sync (capturable)

    def segment_box(self, image2d, box, zoom: str = "auto", display_range=None) -> np.ndarray:
        """Boolean (H, W) mask for ``box`` on a slice (an array or a lazy array-like), embedded whole or, by the
        ``zoom`` policy, as a crop around the box (see `inference.zoom`)."""
        from .zoom import predict_box

        return predict_box(self, image2d, box, zoom, display_range)

    # ---- volumes
    def propagate(self, volume: np.ndarray, start_slice: int, mask: np.ndarray, axis: int = 0,
                  display_range=None, progress=None, cancel=None, **options) -> np.ndarray:
        """Extend a slice mask through the neighbouring slices of ``volume`` in both directions.

        A boolean array of the spatial shape; ``options`` as in `propagation.propagate_slices`, which
        says how each slice is prompted (``zoom``) and where a direction stops. Slices map to the model's pixels
        through one intensity range, the whole volume's unless ``display_range`` is given.
        """
        from .propagation import propagate_slices

        volume = np.asarray(volume)
        colour = volume.ndim == 4 and volume.shape[-1] in (3, 4)
        if volume.ndim - colour != 3:
            raise MedsegError(f"propagate needs a 3-D volume, got shape {volume.shape}")
        slices = np.moveaxis(volume, axis, 0)
        if display_range is None and volume.dtype != np.uint8:  # one intensity mapping for every slice
            display_range = (float(np.nanmin(volume)), float(np.nanmax(volume)))
        found = dict(propagate_slices(self, slices.__getitem__, len(slices), start_slice, mask,
                                      display_range=display_range, progress=progress, cancel=cancel, **options))
        result = np.zeros(slices.shape[:3], dtype=bool)
        result[start_slice] = mask  # checked by propagate_slices
        for index, predicted in found.items():
            result[index] = predicted
        return np.moveaxis(result, 0, axis)


def native_bf16(device) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def clip_box(box, hw) -> np.ndarray:
    """(x0, y0, x1, y1) ordered and clipped to an image of size ``hw``; empty boxes raise PromptError."""
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.size != 4 or not np.isfinite(values).all():
        raise PromptError(f"A box needs four finite numbers (x0, y0, x1, y1), got {box!r}")
    h, w = hw
    x0, x1 = np.clip(sorted(values[[0, 2]]), 0, w)
    y0, y1 = np.clip(sorted(values[[1, 3]]), 0, h)
    if x1 <= x0 or y1 <= y0:
        corners = ", ".join(f"{v:g}" for v in values)
        raise PromptError(f"The box ({corners}) has no area inside the {w}x{h} image")
    return np.array([x0, y0, x1, y1])


def check_points(points, hw, labels=None) -> np.ndarray:
    """(N, 2) points (x, y) in pixels of an image of size ``hw``, checked as `clip_box` checks boxes: every
    coordinate finite and inside the image (a point outside would silently give an empty mask), and
    ``labels`` (if given) one 0 or 1 per point. ``hw`` None checks all but the image's extent."""
    values = np.asarray(points, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 2 or not len(values):
        raise PromptError(f"Points are (x, y) pairs, got {points!r}")
    h, w = hw if hw is not None else (np.inf, np.inf)
    for x, y in values:
        if not (np.isfinite(x) and np.isfinite(y)):
            raise PromptError(f"A point needs two finite numbers (x, y), got ({x:g}, {y:g})")
        if hw is not None and not (0 <= x <= w and 0 <= y <= h):
            raise PromptError(f"The point ({x:g}, {y:g}) lies outside the {w}x{h} image")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(values):
            raise PromptError(f"{len(values)} points but {len(labels)} point labels")
        if not np.isin(labels, (0, 1)).all():
            raise PromptError(f"Point labels are 1 (object) or 0 (background), got {labels.tolist()}")
    return values


def _box_region(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = clip_box(box, mask.shape)
    region = np.zeros_like(mask)
    region[int(y0):int(np.ceil(y1)) + 1, int(x0):int(np.ceil(x1)) + 1] = True
    return region


def _grown_box(mask: np.ndarray, margin: float) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.min() - margin, rows.min() - margin, cols.max() + margin, rows.max() + margin])
