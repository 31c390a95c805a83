"""nnU-Net's resampling plane by plane (inference.nnunet_resampling) against its definition on whole
volumes: scikit-image's resize of each channel volume (or of each plane across the low-resolution axis)
and map_coordinates along that axis. The comparison with nnunetv2 itself is tests/peers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from skimage.transform import resize

from napari_medseg.errors import CheckpointError
from napari_medseg.inference.nnunet_resampling import Resampling, lowres_axis, new_shape, resampling_spec

SPEC = {"function": "resample_data_or_seg_to_shape",
        "kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}}


def volume(shape, seed=0):
    """Blocks of different heights per plane (sharp edges: cubic overshoot; planes of different ranges)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 0.1, size=(1, *shape))
    for d in range(shape[0]):
        data[0, d, 3:9, 2:7] += 1 + d
    return data


def planewise(resampling, data):
    bounds = resampling.bounds(data)
    return np.stack([resampling(data[:, d], bounds) for d in range(data.shape[1])], axis=1)


def test_lowres_axis_follows_nnunet_rules():
    assert lowres_axis([1, 1, 1], [1, 0.8, 0.8]) is None
    assert lowres_axis([4, 1, 1], [4, 0.8, 0.8]) == 0  # anisotropic now: its thick axis
    assert lowres_axis([1, 1, 1], [1, 1, 3.5]) == 2  # isotropic now, anisotropic after: the new thick axis
    assert lowres_axis([1, 1, 3], [1, 1, 1]) is None  # ratio 3 is not above the threshold
    assert lowres_axis([1, 1, 3], [1, 1, 1], threshold=2) == 2
    assert lowres_axis([4, 4, 1], [4, 4, 1]) is None  # two thick axes: no separate axis
    assert lowres_axis([2, 1, 1], [1, 1, 1], force_separate_z=True) == 0
    assert lowres_axis([4, 1, 1], [4, 1, 1], force_separate_z=False) is None
    assert new_shape([5, 10, 11], [2, 1, 1], [2, 0.75, 0.75]) == [5, 13, 15]


def test_cubic_clips_to_the_channel_volume():
    """Without separate z, nnU-Net resizes each channel as a volume and clips to its range, not a plane's."""
    data = volume((3, 12, 10))
    spacing, target = [1.0, 1.0, 1.0], [1.0, 0.7, 0.7]
    out_shape = new_shape(data.shape[1:], spacing, target)
    resampling = Resampling.from_spec(SPEC, data.shape[2:], out_shape[1:], spacing, target)
    assert resampling.axis is None and resampling.clips_across_planes
    expected = resize(data[0], out_shape, 3, mode="edge", anti_aliasing=False)[None]
    got = planewise(resampling, data)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    per_plane = np.stack([resize(p, out_shape[1:], 3, mode="edge", anti_aliasing=False) for p in data[0]])
    assert np.abs(per_plane - expected[0]).max() > 1e-3  # the planes' own ranges would clip differently


def test_thick_axis_in_the_plane_is_interpolated_with_order_z():
    """Thick x: resize of each (z, y) plane with order 3, then x by map_coordinates of order_z (nearest)."""
    data = volume((3, 12, 5))
    spacing, target = [1.0, 1.0, 4.0], [1.0, 0.8, 1.0]
    out_shape = new_shape(data.shape[1:], spacing, target)
    resampling = Resampling.from_spec(SPEC, data.shape[2:], out_shape[1:], spacing, target)
    assert resampling.axis == 2
    across = np.stack([resize(data[0, :, :, x], out_shape[:2], 3, mode="edge", anti_aliasing=False)
                       for x in range(data.shape[3])], axis=-1)
    grid = list(np.meshgrid(*[np.arange(n, dtype=float) for n in out_shape], indexing="ij"))
    grid[2] = data.shape[3] / out_shape[2] * (grid[2] + 0.5) - 0.5
    expected = map_coordinates(across, np.stack(grid), order=0, mode="nearest")[None]
    np.testing.assert_allclose(planewise(resampling, data), expected, atol=1e-9)


def test_thick_slicing_axis_resizes_and_clips_each_plane():
    data = volume((3, 12, 10))
    spacing, target = [4.0, 1.0, 1.0], [4.0, 0.7, 0.7]
    out_shape = new_shape(data.shape[1:], spacing, target)
    resampling = Resampling.from_spec(SPEC, data.shape[2:], out_shape[1:], spacing, target)
    assert resampling.axis == 0 and not resampling.clips_across_planes
    expected = np.stack([resize(p, out_shape[1:], 3, mode="edge", anti_aliasing=False) for p in data[0]])[None]
    np.testing.assert_allclose(planewise(resampling, data), expected, atol=1e-9)


def test_plans_resampling_is_checked():
    assert resampling_spec({}, "probabilities")["kwargs"]["order"] == 1  # the default planner's choice
    with pytest.raises(CheckpointError, match="not one of nnU-Net's resampling functions"):
        resampling_spec({"resampling_fn_data": "my_resampler", "resampling_fn_data_kwargs": {}}, "data")
    with pytest.raises(CheckpointError, match="no such argument"):
        resampling_spec({"resampling_fn_data": "resample_data_or_seg_to_shape",
                         "resampling_fn_data_kwargs": {"order": 3, "antialias": True}}, "data")
    spec = resampling_spec({"resampling_fn_data": "resample_torch_fornnunet",
                            "resampling_fn_data_kwargs": {"is_seg": False, "mode": "bicubic"}}, "data")
    assert Resampling.from_spec(spec, (4, 4), (8, 8), [1, 1, 1], [1, 0.5, 0.5]).axis is None
    with pytest.raises(CheckpointError, match="aniso_axis_mode"):
        Resampling.from_spec({**spec, "kwargs": {"aniso_axis_mode": "bicubic"}}, (4, 4), (8, 8), [1, 1, 1], [1, 1, 1])
