"""Automatic 2-D prediction: nnU-Net's pipeline (normalisation, crop, resampling, sliding window,
mirroring) and VM-UNet's official pre-processing."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_medseg.errors import Cancelled, MedsegError  # noqa: E402
from napari_medseg.inference import auto2d  # noqa: E402
from napari_medseg.inference.auto2d import predict_auto2d  # noqa: E402
from napari_medseg.io.image import Image  # noqa: E402
from napari_medseg.models.loaded import LoadedModel  # noqa: E402
from napari_medseg.models.nnunet_checkpoint import parse_nnunet_checkpoint  # noqa: E402
from napari_medseg.models.swin_umamba import SwinUMambaD  # noqa: E402
from napari_medseg.models.vm_unet import VMUNet, preprocessing_for  # noqa: E402


def nnunet_preprocessing(channels, patch=(32, 32), spacing=(1.0, 1.0), schemes=None, mirror=(0, 1)):
    config = {"patch_size": list(patch), "spacing": list(spacing),
              "normalization_schemes": schemes or ["ZScoreNormalization"] * len(channels),
              "use_mask_for_norm": [False] * len(channels)}
    plans = {"configurations": {"2d": config}, "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "foreground_intensity_properties_per_channel": {
                 "0": {"mean": 50.0, "std": 10.0, "percentile_00_5": 20.0, "percentile_99_5": 80.0}}}
    state = {"network_weights": {}, "trainer_name": "t", "inference_allowed_mirroring_axes": mirror,
             "init_args": {"plans": plans, "configuration": "2d", "fold": "all",
                           "dataset_json": {"channel_names": {str(i): c for i, c in enumerate(channels)},
                                            "labels": {"background": 0, "a": 1, "b": 2}}}}
    return parse_nnunet_checkpoint(state).preprocessing()


def pixelwise_model(channels, pre, seed=0):
    """A 1x1 convolution: its tiled, Gaussian-weighted, mirrored prediction equals its whole-image one."""
    torch.manual_seed(seed)
    network = torch.nn.Conv2d(channels, 3, 1).eval()
    return LoadedModel(network, "test", "auto2d", {0: "background", 1: "a", 2: "b"}, pre)


def expected_pixelwise(loaded, data, box):
    """argmax(W z + b) inside the non-zero bounding box (z-scored over it), 0 outside. data: (C, Z, Y, X)."""
    inner = data[(slice(None),) + box].astype(np.float32)
    inner = (inner - inner.mean(axis=(1, 2, 3), keepdims=True)) / inner.std(axis=(1, 2, 3), keepdims=True)
    w = loaded.network.weight.detach().numpy()[:, :, 0, 0]
    b = loaded.network.bias.detach().numpy()
    logits = np.einsum("kc,czyx->kzyx", w, inner) + b[:, None, None, None]
    labels = np.zeros(data.shape[1:], np.uint8)
    labels[box] = logits.argmax(0)
    return labels


def volume_with_border(shape, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    data = np.zeros((channels, *shape), np.float32)
    data[:, :, 4:-6, 3:-5] = rng.uniform(1, 100, size=(channels, shape[0], shape[1] - 10, shape[2] - 8))
    return data, (slice(0, shape[0]), slice(4, shape[1] - 6), slice(3, shape[2] - 5))


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_volume_matches_pixelwise_prediction(mirror, batch_size):
    data, box = volume_with_border((3, 61, 45))  # 61 x 45 slices: several overlapping 32 x 32 tiles
    loaded = pixelwise_model(1, nnunet_preprocessing(["MR"]))
    image = Image(data[0], (1.0, 1.0, 2.5), (0, 0, 0), np.eye(3), modality="MR")
    labels = predict_auto2d(loaded, image, device="cpu", mirroring=mirror, batch_size=batch_size)
    assert labels.shape == image.spatial_shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected_pixelwise(loaded, data, box))


@pytest.mark.parametrize("mirroring, axes, passes", [(None, (0, 1), 4), (False, (0, 1), 1), (None, (1,), 2),
                                                      (None, None, 1)])
def test_nnunet_mirrors_over_the_checkpoint_axes_by_default(mirroring, axes, passes):
    """As nnUNetPredictor: every flip of inference_allowed_mirroring_axes unless turned off (the fast choice)."""
    data, _ = volume_with_border((1, 20, 20))
    loaded = pixelwise_model(1, nnunet_preprocessing(["MR"], mirror=axes))
    calls = []
    loaded.network.register_forward_hook(lambda *a: calls.append(1))
    predict_auto2d(loaded, Image(data[0], (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3)), device="cpu", mirroring=mirroring)
    assert len(calls) == passes  # one 32 x 32 tile


def test_segment_passes_device_and_mirroring_on(monkeypatch):
    from napari_medseg import segmentation

    seen = {}
    monkeypatch.setattr(auto2d, "predict_auto2d", lambda loaded, image, **kwargs: seen.update(kwargs) or 0)
    loaded = pixelwise_model(1, nnunet_preprocessing(["MR"]))
    segmentation.segment(np.ones((8, 8), np.float32), loaded, device="cpu", mirroring=False)
    assert seen["device"] == "cpu" and seen["mirroring"] is False
    loaded.info["device"] = "cpu"  # where load_model put it
    segmentation.segment(np.ones((8, 8), np.float32), loaded)
    assert seen["device"] == "cpu" and seen["mirroring"] is None


def test_rgb_image_smaller_than_the_patch():
    data, box = volume_with_border((1, 20, 25), channels=3)
    rgb = np.moveaxis(data[:, 0], 0, -1)
    loaded = pixelwise_model(3, nnunet_preprocessing(["R", "G", "B"]))
    image = Image(rgb, (1.0, 1.0), (0, 0), np.eye(2), modality="RGB", intensity="rgb", channel_axis=-1)
    labels = predict_auto2d(loaded, image, device="cpu")
    assert labels.shape == (20, 25)
    np.testing.assert_array_equal(labels, expected_pixelwise(loaded, data, box)[0])


def test_selected_slices_only():
    data, box = volume_with_border((5, 40, 40))
    loaded = pixelwise_model(1, nnunet_preprocessing(["MR"]))
    image = Image(data[0], (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3))
    labels = predict_auto2d(loaded, image, device="cpu", slices=[1, 3])
    expected = expected_pixelwise(loaded, data, box)  # normalised over the whole volume, as nnU-Net
    np.testing.assert_array_equal(labels[[1, 3]], expected[[1, 3]])
    assert not labels[[0, 2, 4]].any()
    with pytest.raises(MedsegError, match="Slice 5 is outside"):
        predict_auto2d(loaded, image, device="cpu", slices=[5])


def test_resampling_to_the_plans_spacing():
    image_array = np.zeros((1, 64, 48), np.float32)
    image_array[0, 10:40, 8:30] = 200.0  # a bright block on a dim background
    image_array[0][image_array[0] == 0] = 5.0
    pre = nnunet_preprocessing(["CT"], schemes=["CTNormalization"], spacing=(1.0, 1.0))
    loaded = pixelwise_model(1, pre)
    with torch.no_grad():
        loaded.network.weight.zero_()
        loaded.network.weight[1, 0] = 1.0  # class 1 where the (clipped, normalised) intensity is high
        loaded.network.bias.zero_()
    image = Image(image_array, (0.5, 0.5, 3.0), (0, 0, 0), np.eye(3), modality="CT", intensity="HU")
    seen = []
    original = auto2d._padded_plane
    auto2d._padded_plane = lambda *a: seen.append(a[2]) or original(*a)
    try:
        labels = predict_auto2d(loaded, image, device="cpu")
    finally:
        auto2d._padded_plane = original
    assert seen == [[32, 24]]  # 0.5 mm pixels at the plans' 1 mm: half the size, as nnU-Net's compute_new_shape
    expected = np.zeros((1, 64, 48), np.uint8)
    expected[0, 10:40, 8:30] = 1
    assert labels.shape == (1, 64, 48)
    assert (labels == expected).mean() > 0.97  # only the resampled block edges may differ


def test_normalisation_schemes():
    data = np.array([[[0, 10, 20, 300]], [[1, 2, 3, 4]], [[0, 51, 102, 255]]], np.float32)[:, None]
    mask = np.array([[[False, True, True, True]]])
    schemes = [{"scheme": "CTNormalization", "mean": 100.0, "std": 50.0, "lower": 5.0, "upper": 250.0},
               {"scheme": "ZScoreNormalization", "use_mask": True},
               {"scheme": "RGBTo01Normalization"}]
    out = auto2d.normalize(data.copy(), mask, schemes)
    np.testing.assert_allclose(out[0].ravel(), (np.array([5, 10, 20, 250]) - 100) / 50)
    inside = np.array([2.0, 3.0, 4.0])
    np.testing.assert_allclose(out[1].ravel(), [1.0, *((inside - inside.mean()) / inside.std())], rtol=1e-6)
    np.testing.assert_allclose(out[2].ravel(), [0, 0.2, 0.4, 1.0])


def test_window_positions_and_weights():
    assert auto2d.window_starts(110, 64) == [0, 23, 46]  # nnU-Net's own example
    assert auto2d.window_starts(64, 64) == [0]
    assert auto2d.window_starts(320, 128) == [0, 64, 128, 192]
    weights = auto2d.gaussian_importance((32, 40))
    assert weights.max() == weights[16, 20] == 1.0 and weights.min() > 0
    np.testing.assert_allclose(weights[16, 20 - 7], weights[16, 20 + 7])


def test_mirroring_averages_every_flip():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, 3, padding=1).eval()  # not flip-equivariant
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    got = auto2d._Runner(network, torch.device("cpu"), 2)(x, (0, 1))
    t = torch.from_numpy(x)
    with torch.no_grad():
        flips = [[], [2], [3], [2, 3]]
        expected = sum(torch.flip(network(torch.flip(t, f)), f) if f else network(t) for f in flips) / 4
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_channel_count_progress_and_cancel():
    loaded = pixelwise_model(3, nnunet_preprocessing(["R", "G", "B"]))
    grey = Image(np.ones((40, 40), np.float32), (1.0, 1.0), (0, 0), np.eye(2))
    with pytest.raises(MedsegError, match=r"needs 3 input channel\(s\) \(R, G, B\); the image has 1"):
        predict_auto2d(loaded, grey, device="cpu")
    loaded = pixelwise_model(1, nnunet_preprocessing(["MR"]))
    calls = []
    predict_auto2d(loaded, grey, device="cpu", progress=lambda done, total, msg: calls.append((done, total)))
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)  # 40 x 40 with 32 x 32 tiles: 2 x 2 windows
    checks = []
    with pytest.raises(Cancelled):  # asked to stop after the first batch
        predict_auto2d(loaded, grey, device="cpu", cancel=lambda: checks.append(1) or len(checks) > 2)
    assert len(checks) == 3
    box2d = LoadedModel(loaded.network, "sam", "box2d")
    with pytest.raises(MedsegError, match="not an automatic 2-D model"):
        predict_auto2d(box2d, grey, device="cpu")


def test_swin_umamba_dagger_end_to_end():
    torch.manual_seed(0)
    network = SwinUMambaD(1, 3).eval()
    loaded = LoadedModel(network, "swin_umamba_d", "auto2d", {0: "background", 1: "a", 2: "b"},
                         nnunet_preprocessing(["MR"], patch=(64, 64)))
    image = Image(np.random.default_rng(1).uniform(0, 100, (70, 90)).astype(np.float32), (1.0, 1.0), (0, 0),
                  np.eye(2))
    labels = predict_auto2d(loaded, image, device="cpu", batch_size=4)
    assert labels.shape == (70, 90) and set(np.unique(labels)) <= {0, 1, 2}


def test_vm_unet_isic_and_synapse_pipelines():
    torch.manual_seed(0)
    small = {"input_size": [64, 64]}  # the official 256 / 224 only cost time here
    isic = LoadedModel(VMUNet(3, 1).eval(), "vm_unet", "auto2d", {0: "background", 1: "lesion"},
                       {**preprocessing_for(1), **small})
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    image = Image(photo, (1.0, 1.0), (0, 0), np.eye(2), modality="RGB", intensity="rgb", channel_axis=-1)
    labels = predict_auto2d(isic, image, device="cpu")
    assert labels.shape == (60, 80) and set(np.unique(labels)) <= {0, 1}
    plane = auto2d._vm_unet_input(np.moveaxis(photo, -1, 0).astype(np.float32), isic.preprocessing, (60, 80))
    assert plane.shape == (3, 60, 80) and plane.min() == 0 and np.isclose(plane.max(), 255)
    scaled = (photo.astype(np.float32) - photo.min()) / (int(photo.max()) - int(photo.min())) * 255
    np.testing.assert_allclose(plane, np.moveaxis(scaled, -1, 0), rtol=1e-5)  # min-max over all channels
    grey = Image(photo[..., 0].astype(np.float32), (1.0, 1.0), (0, 0), np.eye(2))
    assert predict_auto2d(isic, grey, device="cpu").shape == (60, 80)  # VM-UNet repeats grey to 3 channels
    synapse = LoadedModel(VMUNet(3, 9).eval(), "vm_unet", "auto2d", dict(enumerate("abcdefghi")),
                          {**preprocessing_for(9), **small})
    ct = Image(rng.uniform(-1000, 1000, (2, 50, 40)).astype(np.float32), (1.0, 1.0, 3.0), (0, 0, 0), np.eye(3))
    labels = predict_auto2d(synapse, ct, device="cpu", batch_size=2)
    assert labels.shape == (2, 50, 40) and labels.max() < 9
    with pytest.raises(MedsegError, match="needs 1 input channel"):
        predict_auto2d(synapse, image, device="cpu")


def test_lvm_med_unet_slices_as_its_authors_feed_them():
    smp = pytest.importorskip("segmentation_models_pytorch")
    from skimage.transform import resize

    from napari_medseg.models import lvm_med_unet

    torch.manual_seed(0)
    network = smp.Unet("resnet50", encoder_weights=None, in_channels=1, classes=3).eval()
    loaded = LoadedModel(network, "lvm_med_unet", "auto2d", {0: "background", 1: "a", 2: "b"},
                         lvm_med_unet.preprocessing(64, 1))
    volume = np.random.default_rng(0).uniform(-200, 300, (2, 40, 50)).astype(np.float32)
    image = Image(volume, (1.0, 1.0, 2.0), (0, 0, 0), np.eye(3), modality="CT", intensity="HU")
    labels = predict_auto2d(loaded, image, device="cpu", batch_size=2)
    for z in range(2):
        x = torch.from_numpy(lvm_med_unet.prepare_input(volume[z], 1, 64))[None]
        with torch.no_grad():
            expected = network(x).argmax(1)[0].numpy()
        expected = resize(expected, (40, 50), order=0, preserve_range=True, anti_aliasing=False)
        np.testing.assert_array_equal(labels[z], expected)
    two_channels = Image(np.zeros((40, 50, 2), np.float32), (1.0, 1.0), (0, 0), np.eye(2), channel_axis=-1)
    with pytest.raises(MedsegError, match="grey or RGB"):
        predict_auto2d(loaded, two_channels, device="cpu")


def test_cubic_probabilities_are_clipped_over_the_volume():
    """Plans that resample logits back with order 3: nnU-Net resizes each class's logit volume and clips it
    to that volume's range; the planes are held until all are known."""
    from skimage.transform import resize

    data, box = volume_with_border((3, 30, 26))
    pre = nnunet_preprocessing(["MR"], spacing=(0.7, 0.7))
    pre["resampling_probabilities"] = {"function": "resample_data_or_seg_to_shape",
                                       "kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}}
    loaded = pixelwise_model(1, pre)
    labels = predict_auto2d(loaded, Image(data[0], (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3)), device="cpu",
                            mirroring=False)
    inner = data[(slice(None),) + box][0].astype(np.float32)
    inner = (inner - inner.mean()) / inner.std()
    shape = [inner.shape[0], *[int(round(n / 0.7)) for n in inner.shape[1:]]]
    resampled = resize(inner.astype(np.float64), shape, 3, mode="edge", anti_aliasing=False).astype(np.float32)
    w, b = loaded.network.weight.detach().numpy()[:, 0, 0, 0], loaded.network.bias.detach().numpy()
    logits = w[:, None, None, None] * resampled + b[:, None, None, None]
    back = np.stack([resize(k.astype(np.float64), inner.shape, 3, mode="edge", anti_aliasing=False) for k in logits])
    expected = np.zeros(data.shape[1:], np.uint8)
    expected[box] = back.argmax(0)
    assert (labels == expected).mean() > 0.999  # float32 network arithmetic may flip an exact tie
