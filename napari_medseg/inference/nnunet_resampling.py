"""nnU-Net v2's resampling, as the plans name it, computed one plane of a 2-D configuration at a time.

The plans name a function and its keyword arguments for the image (``resampling_fn_data``) and for the
network's outputs on their way back (``resampling_fn_probabilities``). nnU-Net ships three that take its
call ``fn(data, new_shape, current_spacing, new_spacing, **kwargs)``:

- ``resample_data_or_seg_to_shape`` (``preprocessing/resampling/default_resampling.py``): scikit-image's
  ``resize`` (edge mode, no anti-aliasing, clipped to the input's range) of order ``order``; when the
  spacing is anisotropic (largest / smallest > ``separate_z_anisotropy_threshold``, 3; first the current
  spacing, then the new one, unless ``force_separate_z`` decides) and exactly one axis has the largest
  spacing, the planes across that axis are resized with ``order`` and the axis itself is interpolated by
  ``map_coordinates`` of order ``order_z`` (nearest edge, half-pixel centres, no clipping);
- ``resample_torch_fornnunet`` (``resample_torch.py``): ``torch.nn.functional.interpolate``: trilinear, or
  with separate z ``mode`` across the low-resolution axis and ``aniso_axis_mode`` along it;
- ``no_resampling_hack``: the data unchanged.

A 2-D configuration keeps the spacing of the first (slicing) axis, so every output plane along it
depends on the same input plane only: interpolating an axis at its own knots returns the samples. What
does reach across planes is the clipping of ``resize``: to the range of the whole channel without
separate z, of the plane with the low-resolution axis first, and of each row (or column) across all
planes when the low-resolution axis lies in the plane. ``Resampling.bounds`` gives those ranges from the
whole volume; planes are then resampled independently. Clipping only changes interpolations of order 2
or more (order 0 and 1 never leave the input's range), so no bounds are needed for them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError

ANISO_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD
FUNCTIONS = ("resample_data_or_seg_to_shape", "resample_torch_fornnunet", "no_resampling_hack")
_KWARGS = {
    "resample_data_or_seg_to_shape": {"is_seg", "order", "order_z", "force_separate_z",
                                      "separate_z_anisotropy_threshold"},
    "resample_torch_fornnunet": {"is_seg", "num_threads", "device", "memefficient_seg_resampling",
                                 "force_separate_z", "separate_z_anisotropy_threshold", "mode", "aniso_axis_mode"},
    "no_resampling_hack": set(),
}
_DEFAULTS = {  # the functions' own defaults, where the plans leave an argument out
    "resample_data_or_seg_to_shape": {"order": 3, "order_z": 0, "force_separate_z": False},
    "resample_torch_fornnunet": {"force_separate_z": None, "mode": "linear", "aniso_axis_mode": "nearest-exact"},
}
# torch modes on a plane (F.interpolate of a 4-D tensor) for nnU-Net's modes on its 3-D (in-plane) and 4-D data
_IN_PLANE_MODES = {"linear": "bilinear", "bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest",
                   "nearest-exact": "nearest-exact", "area": "area"}
_ALONG_AXIS_MODES = {"linear": "bilinear", "trilinear": "bilinear", "nearest": "nearest",
                     "nearest-exact": "nearest-exact", "area": "area"}


def resampling_spec(configuration: dict, which: str) -> dict:
    """``{"function", "kwargs"}`` of the plans' ``resampling_fn_<which>`` (data or probabilities), checked.

    Plans that name no function get nnU-Net's default planner's choice for that role."""
    default_order = {"data": 3, "probabilities": 1}[which]
    name = configuration.get(f"resampling_fn_{which}", "resample_data_or_seg_to_shape")
    kwargs = dict(configuration.get(f"resampling_fn_{which}_kwargs") or
                  ({"is_seg": False, "order": default_order, "order_z": 0, "force_separate_z": None}
                   if f"resampling_fn_{which}" not in configuration else {}))
    if name not in FUNCTIONS:
        raise CheckpointError(f"The plans resample {which} with {name!r}, which is not one of nnU-Net's "
                              f"resampling functions ({', '.join(FUNCTIONS)})")
    unknown = sorted(set(kwargs) - _KWARGS[name])
    if unknown:
        raise CheckpointError(f"The plans pass {', '.join(map(repr, unknown))} to {name}, which takes no such argument")
    if kwargs.get("is_seg"):
        raise CheckpointError(f"The plans resample {which} as a segmentation (is_seg=True); nnU-Net's predictor "
                              "needs continuous values here")
    return {"function": name, "kwargs": kwargs}


def lowres_axis(current, new, force_separate_z=None, threshold=ANISO_THRESHOLD) -> int | None:
    """The axis nnU-Net resamples separately (``determine_do_sep_z_and_axis``), or None.

    Anisotropic means largest / smallest spacing > ``threshold``, judged on the current spacing, then on
    the new one; ``force_separate_z`` (True/False) overrides the judgement (True takes the current
    spacing's axis). Only one axis with the largest spacing counts: two or three mean no separate axis.
    """
    def largest(spacing):
        spacing = np.asarray(spacing, dtype=float)
        return np.flatnonzero(spacing.max() / spacing == 1)

    def anisotropic(spacing):
        return np.max(spacing) / np.min(spacing) > threshold

    if force_separate_z is not None:
        axes = largest(current) if force_separate_z else None
    elif anisotropic(current):
        axes = largest(current)
    elif anisotropic(new):
        axes = largest(new)
    else:
        axes = None
    return int(axes[0]) if axes is not None and len(axes) == 1 else None


def new_shape(shape, current, new) -> list[int]:
    """nnU-Net's ``compute_new_shape``: round(current / new * size) per axis."""
    return [int(round(c / n * s)) for c, n, s in zip(current, new, shape)]


@dataclass
class Resampling:
    """One resampling of (C, D, H, W) data to (C, D, H', W'), D unchanged, applied plane by plane."""

    function: str
    kwargs: dict
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    axis: int | None  # nnU-Net's separately resampled axis of (D, H, W), or None

    @classmethod
    def from_spec(cls, spec: dict, in_shape, out_shape, current, new) -> "Resampling":
        """``spec`` from ``resampling_spec``; spacings are the 3-D ones nnU-Net passes (numpy order)."""
        function, kwargs = spec["function"], {**_DEFAULTS.get(spec["function"], {}), **spec["kwargs"]}
        threshold = float(kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD))
        axis = lowres_axis(current, new, kwargs.get("force_separate_z"), threshold)
        if function == "no_resampling_hack":
            out_shape = in_shape
        if function == "resample_torch_fornnunet":
            for key, modes in (("mode", _IN_PLANE_MODES), ("aniso_axis_mode", _ALONG_AXIS_MODES)):
                if kwargs[key] not in modes:
                    raise CheckpointError(f"resample_torch_fornnunet {key}={kwargs[key]!r} is not supported "
                                          f"(use one of {', '.join(modes)})")
        return cls(function, kwargs, tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape), axis)

    @property
    def changes(self) -> bool:
        return self.in_shape != self.out_shape

    @property
    def clips(self) -> bool:
        """Whether scikit-image's clipping can change values: cubic (order >= 2) resizes only."""
        return self.changes and self.function == "resample_data_or_seg_to_shape" and self.kwargs["order"] >= 2

    @property
    def clips_across_planes(self) -> bool:
        """Whether a plane's clipping range depends on other planes (so ``bounds`` needs the volume)."""
        return self.clips and self.axis != 0

    def bounds(self, volume: np.ndarray):
        """The clipping ranges (low, high) that ``__call__`` needs, from the whole (C, D, H, W) input, or None."""
        if not self.clips_across_planes:
            return None
        reduce = {None: (1, 2, 3), 1: (1, 3), 2: (1, 2)}[self.axis]
        low, high = volume.min(axis=reduce, keepdims=True), volume.max(axis=reduce, keepdims=True)
        return low[:, 0], high[:, 0]  # (C, 1, 1), (C, H, 1) or (C, 1, W): broadcast over a plane

    def __call__(self, plane: np.ndarray, bounds=None) -> np.ndarray:
        """One (C, H, W) plane resampled to (C, H', W'): float64 (scikit-image, SciPy) or float32 (torch)."""
        if not self.changes:
            return plane
        if self.function == "resample_torch_fornnunet":
            return self._torch(plane)
        return self._scipy(plane, bounds)

    # ------------------------------------------------------------------------------- scikit-image, SciPy

    def _scipy(self, plane: np.ndarray, bounds) -> np.ndarray:
        from scipy.ndimage import map_coordinates
        from skimage.transform import resize

        order, order_z = int(self.kwargs["order"]), int(self.kwargs["order_z"])
        plane = plane.astype(np.float64, copy=False)
        if self.axis is None or self.axis == 0:
            # without separate z each channel is resized (and clipped) as a volume; with the slicing axis
            # low-resolution, plane by plane
            out = np.stack([resize(c, self.out_shape, order, mode="edge", anti_aliasing=False, clip=False)
                            for c in plane])
            if self.clips:
                low, high = bounds if self.axis is None else (plane.min(axis=(1, 2), keepdims=True),
                                                              plane.max(axis=(1, 2), keepdims=True))
                np.clip(out, low, high, out=out)
            return out
        # low-resolution axis in the plane (1: H, 2: W): first the other in-plane axis with ``order``
        # (resize of each plane across the low-resolution axis), then along it with ``order_z``
        across = list(self.in_shape)
        across[2 - self.axis] = self.out_shape[2 - self.axis]
        out = np.stack([resize(c, tuple(across), order, mode="edge", anti_aliasing=False, clip=False)
                        for c in plane])
        if self.clips:
            np.clip(out, *bounds, out=out)
        if across[self.axis - 1] == self.out_shape[self.axis - 1]:
            return out
        grid = [np.arange(n, dtype=float) for n in self.out_shape]
        k = self.axis - 1
        grid[k] = float(self.in_shape[k]) / self.out_shape[k] * (grid[k] + 0.5) - 0.5  # half-pixel centres
        coordinates = np.stack(np.meshgrid(*grid, indexing="ij"))
        return np.stack([map_coordinates(c, coordinates, order=order_z, mode="nearest") for c in out])

    # ------------------------------------------------------------------------------------------- torch

    def _torch(self, plane: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None]
        with torch.no_grad():
            if self.axis is None:  # nnU-Net's trilinear: bilinear in each plane, the slicing axis unchanged
                return F.interpolate(x, self.out_shape, mode="bilinear", align_corners=False)[0].numpy()
            mode = _IN_PLANE_MODES[self.kwargs["mode"]]
            if self.axis == 0:
                return F.interpolate(x, self.out_shape, mode=mode, **_corners(mode))[0].numpy()
            across = list(self.in_shape)
            across[2 - self.axis] = self.out_shape[2 - self.axis]
            if tuple(across) != self.in_shape:
                x = F.interpolate(x, tuple(across), mode=mode, **_corners(mode))
            along = _ALONG_AXIS_MODES[self.kwargs["aniso_axis_mode"]]
            if tuple(across) != self.out_shape:
                x = F.interpolate(x, self.out_shape, mode=along, **_corners(along))
            return x[0].numpy()


def _corners(mode: str) -> dict:
    return {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
