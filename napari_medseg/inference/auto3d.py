"""Automatic 3-D segmentation of CT volumes with a whole-window model (Swin SMT).

The pipeline is Swin SMT's validation pipeline plus TotalSegmentator's 1.5 mm grid:

1. reorient to RAS by axis permutation and flips (nibabel's ``io_orientation``, as MONAI's Orientationd);
2. resample to the model's spacing (trilinear; skipped when already there);
3. clip HU to [-1024, 1024] and scale to [0, 1]; crop to the foreground (> 0, MONAI's CropForegroundd);
4. sliding window of exactly the model's ``roi_size`` (the Soft-MoE mixes all tokens of a window, so
   another size changes every output), MONAI's window grid and Gaussian weights, volumes smaller than a
   window padded with 0 on both sides as MONAI's ``sliding_window_inference`` does;
5. argmax, then nearest neighbour back to the original grid and orientation.

Memory: weighted logits are kept only for a slab one window deep along the longest axis (a ring
buffer); rows are reduced to labels as soon as no later window reaches them. The argmax of a Gaussian
weighted sum equals MONAI's argmax of the normalised average, without the full C x volume output.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from ..errors import MedsegError
from ..io.image import Image
from ..models.loaded import LoadedModel
from ..progress import CancelCheck, Progress, ProgressCallback
from .precision import autocast_dtype, policy_dtype

log = logging.getLogger(__name__)


def predict_auto3d(
    loaded: LoadedModel,
    image: Image,
    *,
    device=None,
    structures: Iterable[int | str] | None = None,
    overlap: float = 0.5,
    batch_size: int | None = None,
    dtype=None,
    precision: str = "faithful",
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Label map of ``image`` (shape ``image.spatial_shape``; 0 = background, values = ``loaded.classes``).

    ``structures`` keeps only those labels (names or values; the argmax still runs over all classes).
    ``precision`` "faithful" (default) runs the network in float32; "fast" on GPU under autocast (bfloat16
    where the GPU has it natively, else float16 with a float32 retry of non-finite outputs; ``dtype``, when
    given, is the autocast type: float16, bfloat16 or float32),
    two windows per batch; a GPU out-of-memory error retries with one window, then on the CPU, each
    announced through ``warn`` (default: the module logger). The network stays on the device last used.
    """
    import torch

    warn = warn or log.warning
    if not 0 <= overlap < 1:
        raise MedsegError(f"Window overlap must be in [0, 1), not {overlap}")
    keep = _structure_lut(loaded.classes, structures)
    volume, spacing, orientation = _ras_volume(loaded, image, warn)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = policy_dtype(precision, dtype, device)
    batch_size = int(batch_size or (2 if device.type == "cuda" else 1))
    attempts = [(device, batch_size)]
    if batch_size > 1:
        attempts.append((device, 1))
    if device.type != "cpu":
        attempts.append((torch.device("cpu"), 1))
    for number, (run_device, run_batch) in enumerate(attempts):
        try:
            run_dtype = dtype if run_device == device else None  # the CPU fallback runs in float32
            labels = _segment_ras(loaded, volume, spacing, run_device, run_batch, overlap, run_dtype, progress, cancel,
                                  warn)
            break
        except torch.OutOfMemoryError:
            if number + 1 == len(attempts):
                raise MedsegError(f"Out of memory segmenting on {run_device}, even one window at a time") from None
            next_device, next_batch = attempts[number + 1]
            if run_device.type == "cuda":
                torch.cuda.empty_cache()
            warn(f"Out of memory on {run_device} with {run_batch} window(s) per batch; "
                 f"retrying on {next_device} with {next_batch} (slower)")
    if keep is not None:
        labels = keep[labels]
    return _from_ras(labels, orientation)


def _structure_lut(classes: dict[int, str], structures) -> np.ndarray | None:
    """Lookup table label -> label or 0 keeping only the requested structures."""
    if structures is None:
        return None
    by_name = {name: value for value, name in classes.items()}
    lut = np.zeros(max(classes) + 1, dtype=np.uint8 if max(classes) < 256 else np.uint16)
    for item in [structures] if isinstance(structures, (str, int)) else structures:
        value = by_name.get(item, item)
        if not isinstance(value, (int, np.integer)) or value not in classes or value == 0:
            known = ", ".join(list(by_name)[1:6])
            raise MedsegError(f"Unknown structure {item!r} for this model (e.g. {known}, ...)")
        lut[value] = value
    return lut


def _ras_volume(loaded, image: Image, warn) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """(volume in RAS axis order as float32, its spacing, nibabel orientation of the image's axes)."""
    from nibabel import orientations

    if image.ndim != 3:
        raise MedsegError(f"{loaded.family} segments 3-D volumes; this image is {image.ndim}-D")
    array = image.array
    if image.channel_axis is not None:
        if array.shape[image.channel_axis] != 1:
            raise MedsegError(f"{loaded.family} needs a single-channel CT volume; this image has "
                              f"{array.shape[image.channel_axis]} channels")
        array = np.squeeze(array, axis=image.channel_axis)
    if image.modality not in ("CT", "unknown"):
        warn(f"{loaded.family} was trained on CT in HU; this image is {image.modality}, so results are unreliable")
    orientation = orientations.io_orientation(image.affine)
    to_ras = orientations.ornt_transform(orientation, orientations.axcodes2ornt("RAS"))
    volume = orientations.apply_orientation(np.asarray(array).transpose(2, 1, 0), to_ras)
    spacing = [0.0] * 3
    for axis, (world_axis, _) in enumerate(orientation):
        spacing[int(world_axis)] = image.spacing[axis]
    return np.ascontiguousarray(volume, dtype=np.float32), tuple(spacing), orientation


def _from_ras(labels: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    from nibabel import orientations

    back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), orientation)
    return np.ascontiguousarray(orientations.apply_orientation(labels, back).transpose(2, 1, 0))


def _segment_ras(loaded, volume, spacing, device, batch_size, overlap, dtype, progress, cancel, warn) -> np.ndarray:
    """Labels of the RAS volume at its own grid."""
    import torch
    import torch.nn.functional as F

    prep = loaded.preprocessing
    roi = tuple(int(r) for r in prep.get("roi_size", (128, 128, 128)))
    target = tuple(float(s) for s in prep.get("spacing", spacing))
    low, high = prep.get("clip", (-1024.0, 1024.0))
    Progress(1, "Preparing volume", progress, cancel)
    with torch.inference_mode():
        x = torch.from_numpy(volume).to(device)
        grid = tuple(max(1, round(n * s / t)) for n, s, t in zip(volume.shape, spacing, target))
        if grid != volume.shape:
            x = F.interpolate(x[None, None], size=grid, mode="trilinear", align_corners=False)[0, 0]
        x = ((x - low) / (high - low)).clamp_(0.0, 1.0)
        box = _foreground_box(x) if prep.get("crop_foreground", True) else tuple(slice(0, n) for n in grid)
        labels = sliding_window_labels(
            loaded.network, x[box], roi, overlap=overlap, batch_size=batch_size, device=device,
            dtype=autocast_dtype(dtype, device), progress=progress, cancel=cancel, warn=warn,
        )
    full = np.zeros(grid, dtype=labels.dtype)
    full[box] = labels
    index = [np.minimum(((np.arange(n) + 0.5) * g / n).astype(np.int64), g - 1) for n, g in zip(volume.shape, grid)]
    return full[np.ix_(*index)]


def _foreground_box(x) -> tuple[slice, ...]:
    """Bounding box of voxels > 0 (the whole volume when there are none)."""
    import torch

    foreground = x > 0
    box = []
    for axis in range(3):
        hits = torch.nonzero(foreground.any(dim=[a for a in range(3) if a != axis])).flatten()
        if hits.numel() == 0:
            return tuple(slice(0, n) for n in x.shape)
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def sliding_window_labels(network, volume, roi_size, *, overlap=0.5, batch_size=1, device=None, dtype=None,
                          progress=None, cancel=None, warn=None) -> np.ndarray:
    """Argmax labels of ``network`` over a 3-D tensor with MONAI's Gaussian sliding window.

    Equals ``argmax(sliding_window_inference(volume, roi_size, batch_size, network, overlap,
    mode="gaussian"))`` (same windows, weights and padding) with memory for one slab of windows.
    """
    import torch
    import torch.nn.functional as F
    from monai.data.utils import compute_importance_map, dense_patch_slices

    from .cuda_graphs import GraphCache
    from .precision import Precision

    device = torch.device(device or volume.device)
    network.to(device).eval()
    if hasattr(network, "use_fused_attention"):
        network.use_fused_attention(device.type == "cuda")
    shape = tuple(volume.shape)
    pad = [(max(r - n, 0) // 2, max(r - n, 0) - max(r - n, 0) // 2) for r, n in zip(roi_size, shape)]
    volume = F.pad(volume.to(device, torch.float32), [p for pair in reversed(pad) for p in pair])
    padded = tuple(volume.shape)
    interval = [r if r == n else max(int(r * (1 - overlap)), 1) for r, n in zip(roi_size, padded)]
    windows = dense_patch_slices(padded, roi_size, interval)
    axis = int(np.argmax(padded))  # the slab runs along the longest axis
    windows.sort(key=lambda w: w[axis].start)  # stable: MONAI's order within a slab
    weight = compute_importance_map(roi_size, mode="gaussian", sigma_scale=0.125, device=device)
    accumulator, warn = None, warn or log.warning
    precision = Precision(device, dtype or torch.float32, warn)
    forward = GraphCache(network, limit=2)  # on CUDA a window batch is launch-bound: replay it as one graph
    steps = Progress(len(windows), "Segmenting", progress, cancel)
    for start in sorted({w[axis].start for w in windows}):
        plane = [w for w in windows if w[axis].start == start]
        for first in range(0, len(plane), batch_size):
            batch = plane[first:first + batch_size]
            inputs = torch.stack([volume[w] for w in batch])[:, None]
            logits = precision(forward, inputs)
            if accumulator is None:
                accumulator = _SlabAccumulator(logits.shape[1], padded, axis, roi_size[axis], device, warn)
                weight = weight.to(accumulator.sums.device)
            accumulator.finalize_until(start)
            for window, window_logits in zip(batch, logits):
                accumulator.add(window, window_logits, weight)
            steps.step(len(batch), f"Segmenting: window {steps.done + len(batch)}/{len(windows)}")
    accumulator.finalize_until(padded[axis])
    inside = tuple(slice(before, before + n) for (before, _), n in zip(pad, shape))
    return accumulator.labels[inside]


class _SlabAccumulator:
    """Gaussian-weighted logits of rows [start, start + depth) along ``axis`` in a ring buffer."""

    def __init__(self, channels: int, shape: tuple[int, ...], axis: int, depth: int, device, warn):
        import torch

        slab = list(shape)
        slab[axis] = depth
        if device.type == "cuda" and channels * int(np.prod(slab)) * 4 > torch.cuda.mem_get_info(device)[0] // 2:
            warn("Accumulating logits on the CPU (slower): the volume is large for the GPU's free memory")
            device = torch.device("cpu")
        self.axis, self.depth, self.start = axis, depth, 0
        self.sums = torch.zeros((channels, *slab), dtype=torch.float32, device=device)
        self.labels = np.zeros(shape, dtype=np.uint8 if channels <= 256 else np.uint16)

    def _ring(self, first: int, stop: int):
        """(buffer rows, offset rows) pieces of the absolute rows [first, stop)."""
        offset, count = first % self.depth, stop - first
        head = min(count, self.depth - offset)
        pieces = [(slice(offset, offset + head), slice(0, head))]
        if head < count:
            pieces.append((slice(0, count - head), slice(head, count)))
        return pieces

    def _index(self, rows: slice, window=(slice(None),) * 3) -> tuple:
        index = [slice(None), *window]
        index[1 + self.axis] = rows
        return tuple(index)

    def add(self, window: tuple[slice, ...], logits, weight) -> None:
        start = window[self.axis].start
        for rows, local in self._ring(start, start + self.depth):
            part = logits[self._index(local)].to(self.sums.device)
            self.sums[self._index(rows, window)].addcmul_(part, weight[self._index(local)[1:]])

    def finalize_until(self, stop: int) -> None:
        """Rows before ``stop`` receive no more windows: reduce them to labels and free their rows."""
        import torch

        for rows, local in self._ring(self.start, stop) if stop > self.start else []:
            final = self.sums[self._index(rows)].argmax(dim=0)
            target = [slice(None)] * 3
            target[self.axis] = slice(self.start + local.start, self.start + local.stop)
            self.labels[tuple(target)] = final.to(torch.int32).cpu().numpy()
            self.sums[self._index(rows)] = 0
        self.start = max(self.start, stop)
