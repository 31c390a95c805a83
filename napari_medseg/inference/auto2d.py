"""Automatic 2-D segmentation: an image (2-D, RGB or a volume sliced along its first axis) -> label map.

nnU-Net models (Swin-UMamba, Swin-UMamba†) are run exactly as ``nnUNetPredictor`` runs them: transpose,
crop to the non-zero region, the plans' per-channel normalisation, the plans' resampling to their spacing
(``nnunet_resampling``: separate z, order, clipping), Gaussian-weighted sliding windows with 50 % overlap,
mirroring over the checkpoint's allowed axes, logits resampled back as the plans say, softmax/arg-max or
region sigmoids, un-crop and un-transpose; on CUDA under float16 autocast, as nnUNetPredictor. VM-UNet and LVM-Med
U-Net models use their authors' pre-processing (``models.vm_unet``, ``models.lvm_med_unet``), slice by
slice. Tiles or slices are batched.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from ..errors import MedsegError
from ..io.image import Image
from ..models.loaded import LoadedModel
from ..progress import Progress

DEFAULT_BATCH = {"cpu": 1, "cuda": 8}  # 8 x 512^2 tiles: ~4 GB on a GPU


def predict_auto2d(loaded: LoadedModel, image: Image, *, device=None, mirroring: bool | None = None,
                   batch_size: int | None = None, progress=None, cancel=None, slices=None, dtype=None,
                   precision: str = "faithful") -> np.ndarray:
    """The label map of ``image`` (shape ``image.spatial_shape``, uint8 or uint16).

    ``slices`` limits a volume to these indices along the axis the model slides over (the other slices
    stay 0). ``mirroring``: average over test-time flips. None (the faithful default) flips as the
    model's own predictor does: nnU-Net models over their checkpoint's ``inference_allowed_mirroring_axes``,
    VM-UNet and LVM-Med not at all; False is the fast choice (a quarter of nnU-Net's work), True flips
    every model. ``device`` (a name, "auto" or None: CUDA when present). ``precision``: "faithful" (default)
    runs the network in float32, "fast" on GPU under autocast (``precision.default_dtype``: bfloat16 where
    native, else float16); a given ``dtype`` is used as is.
    """
    from ..device import resolve_device

    from .precision import policy_dtype

    if loaded.task != "auto2d":
        raise MedsegError(f"{loaded.family} is a {loaded.task} model, not an automatic 2-D model")
    device = resolve_device(str(device) if device is not None else None)
    loaded.to(device)
    batch_size = batch_size or DEFAULT_BATCH.get(device.type, 1)
    scheme = loaded.preprocessing.get("scheme")
    # "fast" on CUDA: bfloat16 where native, not nnUNetPredictor's float16, which overflowed in a trained
    # Swin-UMamba (see the README's precision section); float16 outputs that are not finite are recomputed
    dtype = policy_dtype(precision, dtype, device)
    runner = _Runner(loaded.network, device, batch_size, dtype)
    if scheme == "nnunet":
        return _predict_nnunet(loaded, image, runner, mirroring is not False, slices, progress, cancel)
    mirror = bool(mirroring)
    if scheme in ("vm_unet_isic", "vm_unet_synapse"):
        return _predict_vm_unet(loaded, image, runner, mirror, slices, progress, cancel)
    if loaded.preprocessing.get("profile") == "lvm_med":
        return _predict_lvm_med(loaded, image, runner, mirror, slices, progress, cancel)
    raise MedsegError(f"No automatic 2-D prediction for pre-processing {scheme or loaded.preprocessing!r}")


# ----------------------------------------------------------------------------------------- helpers


def channels_first(image: Image, channels: int, names) -> np.ndarray:
    """(C, *spatial) float32; a refusal with the model's channel names when the count differs."""
    array = image.array
    if image.channel_axis is not None:
        array = np.moveaxis(array, image.channel_axis, 0)
        if image.is_rgb and array.shape[0] == 4 and channels == 3:
            array = array[:3]  # RGBA photo: drop the alpha channel
    else:
        array = array[None]
    if array.shape[0] != channels:
        wanted = ", ".join(names) if names else f"{channels} channel(s)"
        raise MedsegError(
            f"This model needs {channels} input channel(s) ({wanted}); the image has {array.shape[0]}"
        )
    return array.astype(np.float32)


def _slice_indices(slices, count: int) -> list[int]:
    if slices is None:
        return list(range(count))
    indices = sorted({int(s) for s in np.atleast_1d(slices)})
    bad = [s for s in indices if not 0 <= s < count]
    if bad:
        raise MedsegError(f"Slice {bad[0]} is outside the image (0..{count - 1})")
    return indices


class _Runner:
    """Runs the network on batches of tiles, under autocast on CUDA (as nnU-Net does)."""

    def __init__(self, network, device, batch_size: int, dtype=None):
        from .cuda_graphs import network_graphs
        from .precision import Precision

        self.device, self.batch_size = device, batch_size
        self.forward = network_graphs(network)  # on CUDA: one graph per batch shape, kept with the network
        self.precision = Precision(device, dtype)

    def __call__(self, tiles: np.ndarray, mirror_axes=()) -> np.ndarray:
        """(n, C, h, w) float32 -> (n, K, h, w) float32 network outputs, averaged over the mirrorings."""
        return self.logits(tiles, mirror_axes).cpu().numpy()

    def logits(self, tiles: np.ndarray, mirror_axes=()) -> "torch.Tensor":
        """``__call__``'s outputs as a float32 tensor on the runner's device."""
        import torch

        count = len(tiles)
        if self.device.type == "cuda" and count < self.batch_size:  # a last, short batch: replay the same graph
            tiles = np.concatenate([tiles, np.zeros((self.batch_size - count, *tiles.shape[1:]), tiles.dtype)])
        x = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.device.type == "cuda":  # pinned and asynchronous: the host prepares the next batch meanwhile
            x = x.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode():
            out = self.precision(self.forward, x).to(torch.float32, copy=True)  # the replayed buffer is reused
            flips = [c for i in range(len(mirror_axes)) for c in itertools.combinations(mirror_axes, i + 1)]
            for axes in flips:
                dims = [a + 2 for a in axes]
                out += torch.flip(self.precision(self.forward, torch.flip(x, dims)), dims).float()
        return out[:count] / (len(flips) + 1)


@lru_cache(maxsize=4)
def gaussian_importance(tile: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's tile weighting: a Gaussian of sigma = tile / 8 centred at tile // 2, no zeros."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(tile)
    impulse[tuple(t // 2 for t in tile)] = 1
    weights = gaussian_filter(impulse, [t / 8 for t in tile], 0, mode="constant", cval=0)
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    return weights.astype(np.float32)


def window_starts(size: int, tile: int, step: float = 0.5) -> list[int]:
    """nnU-Net's tile positions along one axis (``size >= tile``): evenly spread, at most ``step * tile`` apart."""
    count = int(np.ceil((size - tile) / (tile * step))) + 1
    if count == 1:
        return [0]
    spacing = (size - tile) / (count - 1)
    return [int(np.round(spacing * i)) for i in range(count)]


# ------------------------------------------------------------------------------------------ nnU-Net


def crop_to_nonzero(data: np.ndarray, schemes: list[dict]):
    """nnU-Net's crop: (cropped data, box, mask) for the bounding box of voxels non-zero in any channel.

    The mask (hole-filled, as nnU-Net's) is only built when a normalisation scheme uses it (else None):
    filling holes never moves the bounding box, and on a CT it costs more than a second.
    """
    nonzero = np.any(data != 0, axis=0)
    wants_mask = any(scheme.get("use_mask") for scheme in schemes)
    if not nonzero.any():
        return data, tuple(slice(0, s) for s in data.shape[1:]), nonzero if wants_mask else None
    box = []  # per axis from the projection of the mask (np.nonzero of a whole CT takes seconds)
    for axis in range(nonzero.ndim):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    box = tuple(box)
    mask = None
    if wants_mask:
        from scipy.ndimage import binary_fill_holes

        mask = binary_fill_holes(nonzero[box])
    return data[(slice(None),) + box], box, mask


def normalize(data: np.ndarray, mask: np.ndarray, schemes: list[dict]) -> np.ndarray:
    """The plans' normalisation per channel, in place on float32 (C, ...) data."""
    for channel, scheme in zip(data, schemes):
        name = scheme["scheme"]
        if name == "CTNormalization":
            np.clip(channel, scheme["lower"], scheme["upper"], out=channel)
            channel -= scheme["mean"]
            channel /= max(scheme["std"], 1e-8)
        elif name == "ZScoreNormalization":
            if scheme["use_mask"]:
                values = channel[mask]
                channel[mask] = (values - values.mean()) / max(values.std(), 1e-8)
            else:
                mean, std = channel.mean(), channel.std()
                channel -= mean
                channel /= max(std, 1e-8)
        elif name == "RescaleTo01Normalization":
            channel -= channel.min()
            channel /= max(channel.max(), 1e-8)
        elif name == "RGBTo01Normalization":
            channel /= 255.0
    return data


def _predict_nnunet(loaded, image, runner, mirror, slices, progress, cancel) -> np.ndarray:
    import torch

    from .nnunet_resampling import Resampling, new_shape

    pre = loaded.preprocessing
    data = channels_first(image, len(pre["channels"]), pre["channels"])
    spacing = list(image.spacing[::-1])  # numpy order
    if image.ndim == 2:  # nnU-Net reads 2-D images as one slice of a volume
        data, spacing = data[:, None], [999.0] + spacing
    transpose = pre["transpose_forward"]
    data = data.transpose([0, *[i + 1 for i in transpose]])
    spacing = [spacing[i] for i in transpose]
    full_shape = data.shape[1:]
    data, box, mask = crop_to_nonzero(data, pre["normalization"]) if pre["crop_to_nonzero"] else (data, (), None)
    normalize(data, mask, pre["normalization"])
    cropped = data.shape[1:]
    indices = _slice_indices(slices, full_shape[0])
    wanted = [i - box[0].start for i in indices if box[0].start <= i < box[0].stop] if box else indices
    target = [spacing[0], *pre["spacing"]]  # a 2-D configuration keeps the slices' spacing
    to_plans = Resampling.from_spec(pre["resampling_data"], cropped[1:], new_shape(cropped, spacing, target)[1:],
                                    spacing, target)
    plane_shape = list(to_plans.out_shape)
    back = Resampling.from_spec(pre["resampling_probabilities"], plane_shape, cropped[1:], target, spacing)
    if back.out_shape != tuple(cropped[1:]):
        raise MedsegError("The plans resample the data but not the probabilities back (no_resampling_hack)")
    prepare = _plane_preparation(data, to_plans)
    labels = np.zeros(full_shape, np.uint8 if max(loaded.classes, default=0) < 256 else np.uint16)
    into = labels[box] if box else labels
    label_type = torch.uint8 if labels.dtype == np.uint8 else torch.int32
    pending = []  # label planes stay on the runner's device until the end: no per-slice synchronisation
    held = {}  # logits kept until all are known, where clipping them back needs every plane's range
    for n, plane_logits in _sliding_window(runner, prepare, wanted, plane_shape, pre, mirror, progress, cancel):
        if back.clips_across_planes:
            held[n] = plane_logits.cpu().numpy()
            continue
        if back.changes:
            plane_logits = torch.from_numpy(back(plane_logits.cpu().numpy()))
        pending.append((wanted[n], _to_labels(plane_logits, pre).to(label_type)))
    if held:
        bounds = back.bounds(np.stack([held[n] for n in sorted(held)], axis=1))  # over the predicted planes
        pending = [(wanted[n], _to_labels(torch.from_numpy(back(held[n], bounds)), pre).to(label_type))
                   for n in sorted(held)]
    if pending:
        planes = torch.stack([plane for _, plane in pending]).cpu().numpy()
        for (index, _), plane in zip(pending, planes):
            into[index] = plane
    labels = labels.transpose(pre["transpose_backward"])
    return labels[0] if image.ndim == 2 else labels


def _plane_preparation(data: np.ndarray, resampling):
    """index -> that slice of the normalised, cropped (C, D, H, W) data at the plans' spacing, float32."""
    bounds = resampling.bounds(data)  # clipping ranges spanning planes: from the whole volume, as nnU-Net

    def prepare(index: int) -> np.ndarray:
        return resampling(data[:, index], bounds).astype(np.float32, copy=False)

    return prepare


def _to_labels(logits: "torch.Tensor", pre: dict) -> "torch.Tensor":
    """int32 labels of (K, h, w) logits on their device: argmax, or nnU-Net's region order of sigmoids."""
    import torch

    if pre["output"] == "softmax":  # torch's CPU argmax over the first axis is 20x slower than numpy's
        return logits.argmax(0).int() if logits.is_cuda else torch.from_numpy(logits.numpy().argmax(0).astype(np.int32))
    probabilities = torch.sigmoid(logits)
    labels = torch.zeros(logits.shape[1:], dtype=torch.int32, device=logits.device)
    for region, value in enumerate(pre["regions_class_order"]):
        labels[probabilities[region] > 0.5] = value
    return labels


def _sliding_window(runner, prepare, wanted, plane_shape, pre, mirror, progress, cancel):
    """Yield (n, logits (K, *plane_shape)) for each wanted slice (``prepare(index)``: its input), in order.

    The Gaussian-weighted sums stay on the runner's device (a GPU averages and argmaxes its own output).
    """
    import torch

    tile = tuple(pre["patch_size"])
    padded = [max(p, t) for p, t in zip(plane_shape, tile)]
    before = [(p - s) // 2 for p, s in zip(padded, plane_shape)]
    weights = torch.from_numpy(gaussian_importance(tile)).to(runner.device)
    starts = list(itertools.product(*(window_starts(p, t, pre["tile_step_size"]) for p, t in zip(padded, tile))))
    counts = torch.zeros(padded, device=runner.device)
    for y, x in starts:
        counts[y:y + tile[0], x:x + tile[1]] += weights
    crop = (slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, plane_shape))
    mirror_axes = tuple(pre["mirror_axes"]) if mirror else ()
    jobs = [(n, start) for n in range(len(wanted)) for start in starts]
    steps = Progress(-(-len(jobs) // runner.batch_size), "Segmenting", progress, cancel)
    planes, sums = {}, {}
    for first in range(0, len(jobs), runner.batch_size):
        batch = jobs[first:first + runner.batch_size]
        tiles = []
        for n, (y, x) in batch:
            if n not in planes:
                planes[n] = _padded_plane(prepare, wanted[n], plane_shape, padded, before)
            tiles.append(planes[n][:, y:y + tile[0], x:x + tile[1]])
        for (n, (y, x)), out in zip(batch, runner.logits(np.stack(tiles), mirror_axes)):
            if n not in sums:
                sums[n] = torch.zeros((out.shape[0], *padded), device=runner.device)
            sums[n][:, y:y + tile[0], x:x + tile[1]] += out * weights
        steps.step()
        done = len(wanted) if first + len(batch) == len(jobs) else jobs[first + len(batch)][0]
        for n in sorted(m for m in sums if m < done):
            del planes[n]
            yield n, (sums.pop(n) / counts)[crop]


def _padded_plane(prepare, index, plane_shape, padded, before) -> np.ndarray:
    """One slice of all channels, resampled to the plans' spacing and zero-padded to at least the tile."""
    plane = prepare(index)
    out = np.zeros((plane.shape[0], *padded), np.float32)
    out[(slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, plane_shape))] = plane
    return out


# ---------------------------------------------------------------------------- VM-UNet, LVM-Med


def _per_slice(image, planes, runner, mirror, slices, progress, cancel, prepare, finish) -> np.ndarray:
    """Labels of each requested plane (``planes``: slices first), the network run on batches of them."""
    indices = _slice_indices(slices, len(planes))
    shape = image.spatial_shape[-2:]
    labels = np.zeros((len(planes),) + shape, np.uint8)
    steps = Progress(-(-len(indices) // runner.batch_size), "Segmenting", progress, cancel)
    for first in range(0, len(indices), runner.batch_size):
        batch = indices[first:first + runner.batch_size]
        outputs = runner(np.stack([prepare(planes[i]) for i in batch]), (0, 1) if mirror else ())
        for i, out in zip(batch, outputs):
            labels[i] = finish(out, shape)
        steps.step()
    return labels[0] if image.ndim == 2 else labels


def _predict_vm_unet(loaded, image, runner, mirror, slices, progress, cancel) -> np.ndarray:
    """VM-UNet: each slice normalised and resized as the official loaders do."""
    pre = loaded.preprocessing
    channels = 3 if pre["rgb"] and image.channel_axis is not None else 1
    data = channels_first(image, channels, ("R", "G", "B") if channels == 3 else ("grey",))
    planes = np.moveaxis(data[:, None] if image.ndim == 2 else data, 0, 1)  # (slices, C, H, W)
    size = tuple(pre["input_size"])
    return _per_slice(image, planes, runner, mirror, slices, progress, cancel,
                      lambda plane: _vm_unet_input(plane, pre, size), lambda out, shape: _vm_unet_labels(out, pre, shape))


def _predict_lvm_med(loaded, image, runner, mirror, slices, progress, cancel) -> np.ndarray:
    """LVM-Med U-Net: each slice through ``prepare_input`` (its PNG pipeline), arg-max, nearest back."""
    from skimage.transform import resize

    from ..models.lvm_med_unet import prepare_input

    pre = loaded.preprocessing
    planes = image.array if image.channel_axis is None else np.moveaxis(image.array, image.channel_axis, -1)
    if image.channel_axis is not None and planes.shape[-1] not in (3, 4):
        raise MedsegError(f"This model takes grey or RGB images; the image has {planes.shape[-1]} channels")
    planes = planes[None] if image.ndim == 2 else planes

    def finish(out, shape):
        return resize(out.argmax(0), shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)

    return _per_slice(image, planes, runner, mirror, slices, progress, cancel,
                      lambda plane: prepare_input(plane, int(pre["in_channels"]), int(pre["image_size"])), finish)


def _vm_unet_input(plane: np.ndarray, pre: dict, size) -> np.ndarray:
    if pre["normalization"] == "minmax_0_255":  # ISIC: (x - mean) / std then min-max: only the min-max remains
        low, high = plane.min(), plane.max()
        plane = (plane - low) / (high - low) * 255.0 if high > low else np.zeros_like(plane)
        return _bilinear(plane, size)
    low, high = pre["window"]  # Synapse: TransUNet's CT slices, HU window scaled to [0, 1]
    plane = (np.clip(plane, low, high) - low) / (high - low)
    from scipy.ndimage import zoom

    factors = [t / s for t, s in zip(size, plane.shape[1:])]
    return np.stack([zoom(c, factors, order=pre["resize_order"]) for c in plane]).astype(np.float32)


def _bilinear(plane: np.ndarray, size) -> np.ndarray:
    """torchvision's tensor resize of that era: bilinear, half-pixel centres, no anti-aliasing."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0].numpy()


def _vm_unet_labels(output: np.ndarray, pre: dict, shape) -> np.ndarray:
    if pre["output"] == "probability":  # 1-class VM-UNet already returns sigmoid(logits)
        probability = _bilinear(output, tuple(shape))[0]
        return (probability > pre["threshold"]).astype(np.uint8)
    from scipy.ndimage import zoom

    labels = output.argmax(0)
    return zoom(labels, [s / t for s, t in zip(shape, labels.shape)], order=0).astype(np.uint8)
