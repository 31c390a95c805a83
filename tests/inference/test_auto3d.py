"""Automatic 3-D prediction: MONAI-equivalent sliding window, geometry round trips, options, failures."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("nibabel")

from napari_medseg.errors import Cancelled, MedsegError  # noqa: E402
from napari_medseg.inference.auto3d import predict_auto3d, sliding_window_labels  # noqa: E402
from napari_medseg.io.image import Image  # noqa: E402
from napari_medseg.models import load_checkpoint  # noqa: E402
from napari_medseg.models.loaded import LoadedModel  # noqa: E402

CLIP_SCALE = 2048.0  # HU -> [0, 1] over [-1024, 1024]


class WindowNet(torch.nn.Module):
    """Cheap stand-in whose logits depend on each voxel and on the whole window, like the Soft-MoE."""

    def __init__(self, channels: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv3d(1, channels, 3, padding=1)
        self.window_term = torch.nn.Parameter(torch.randn(channels))

    def forward(self, x):
        return self.conv(x) + x.mean(dim=(2, 3, 4), keepdim=True) * self.window_term.view(1, -1, 1, 1, 1)


class ThresholdNet(torch.nn.Module):
    """Label 1 where HU > 500, label 2 where HU > 1500 (as clipped to 1024: never), else 0."""

    def forward(self, x):
        bone = 50 * (x - (500 + 1024) / CLIP_SCALE)
        return torch.cat([torch.zeros_like(x), bone, torch.full_like(x, -1.0)], dim=1)


def model(network, roi=(32, 32, 32), spacing=(1.5, 1.5, 1.5), classes=None) -> LoadedModel:
    classes = classes or {i: ("background" if i == 0 else f"s{i}") for i in range(4)}
    prep = {"spacing": spacing, "roi_size": roi, "clip": (-1024.0, 1024.0), "crop_foreground": True}
    return LoadedModel(network=network.eval(), family="swin_smt", task="auto3d", classes=classes, preprocessing=prep)


def lps_image(array, spacing, direction=np.eye(3), origin=(0.0, 0.0, 0.0), modality="CT") -> Image:
    return Image(array=array, spacing=spacing, origin=origin, direction=direction, modality=modality, intensity="HU")


def world_coordinates(shape, spacing, direction, origin) -> np.ndarray:
    """LPS mm of every voxel of a numpy (z, y, x) array: (z, y, x, 3)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)[..., ::-1]  # (x, y, z)
    return index * np.asarray(spacing) @ np.asarray(direction).T + np.asarray(origin)


def phantom(shape, spacing, direction=np.eye(3), origin=(0.0, 0.0, 0.0)):
    """Soft tissue with an off-centre ellipsoid of bone (1200 HU); returns HU and the bone mask."""
    world = world_coordinates(shape, spacing, direction, origin)
    centre = world.reshape(-1, 3).mean(0) + [12.0, -9.0, 7.0]
    bone = (((world - centre) / [22.0, 15.0, 18.0]) ** 2).sum(-1) < 1
    return np.where(bone, 1200, 40).astype(np.int16), bone


@pytest.mark.parametrize("shape, roi, batch", [((40, 25, 70), (16, 16, 16), 3), ((10, 50, 33), (16, 24, 16), 1)])
def test_sliding_window_matches_monai_argmax(shape, roi, batch):
    from monai.inferers import sliding_window_inference

    network = WindowNet().eval()
    volume = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        averaged = sliding_window_inference(volume[None, None], roi, batch, network, overlap=0.5, mode="gaussian")
    ours = sliding_window_labels(network, volume, roi, overlap=0.5, batch_size=batch)
    assert ours.shape == shape and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, averaged[0].argmax(0).numpy())


@pytest.mark.parametrize(
    "spacing, direction",
    [
        ((0.8, 0.9, 2.5), np.eye(3)),
        ((1.5, 0.7, 3.0), np.diag([-1.0, 1.0, -1.0])),
        ((1.0, 2.0, 3.0), np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])),
        ((1.2, 1.1, 1.6), np.array([[0.94, -0.34, 0], [0.34, 0.94, 0], [0, 0, 1.0]])),  # 20 degrees oblique
    ],
    ids=["aligned", "flipped", "permuted", "oblique"],
)
def test_labels_land_on_the_phantom_in_any_geometry(spacing, direction):
    shape = (int(90 / spacing[2]), int(80 / spacing[1]), int(100 / spacing[0]))
    hu, bone = phantom(shape, spacing, direction, origin=(-40.0, 12.0, 300.0))
    labels = predict_auto3d(model(ThresholdNet()), lps_image(hu, spacing, direction, (-40.0, 12.0, 300.0)))
    assert labels.shape == shape and labels.dtype == np.uint8
    predicted = labels == 1
    dice = 2 * (predicted & bone).sum() / (predicted.sum() + bone.sum())
    assert dice > 0.93


def test_same_anatomy_in_other_array_layouts_gives_identical_labels():
    """The network sees one RAS volume whatever the storage order, so labels agree voxel for voxel."""
    hu = np.random.default_rng(0).integers(-1000, 1500, size=(24, 30, 36)).astype(np.int16)
    loaded = model(WindowNet(), spacing=(1.0, 1.0, 1.0))
    reference = predict_auto3d(loaded, lps_image(hu, (1.0, 1.0, 1.0)))
    flipped = lps_image(hu[:, :, ::-1].copy(), (1.0, 1.0, 1.0), np.diag([-1.0, 1.0, 1.0]), origin=(35.0, 0.0, 0.0))
    np.testing.assert_array_equal(predict_auto3d(loaded, flipped)[:, :, ::-1], reference)
    swapped_direction = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])  # numpy axes y and x exchanged
    swapped = lps_image(hu.transpose(0, 2, 1).copy(), (1.0, 1.0, 1.0), swapped_direction)
    np.testing.assert_array_equal(predict_auto3d(loaded, swapped).transpose(0, 2, 1), reference)


def test_outside_of_field_of_view_is_cropped_away_as_in_monai():
    """Voxels at or below -1024 HU around the scan are cropped before windowing (CropForegroundd)."""
    inside = np.random.default_rng(3).integers(-1000, 1500, size=(22, 28, 34)).astype(np.int16)
    padded = np.pad(inside, ((3, 5), (0, 7), (11, 2)), constant_values=-3024)
    loaded = model(WindowNet(), spacing=(1.0, 1.0, 1.0))
    expected = np.pad(predict_auto3d(loaded, lps_image(inside, (1.0, 1.0, 1.0))), ((3, 5), (0, 7), (11, 2)))
    np.testing.assert_array_equal(predict_auto3d(loaded, lps_image(padded, (1.0, 1.0, 1.0))), expected)


def test_structures_keep_only_the_requested_labels():
    hu = np.random.default_rng(1).integers(-1000, 1500, size=(20, 26, 30)).astype(np.int16)
    loaded = model(WindowNet(), spacing=(1.0, 1.0, 1.0))
    image = lps_image(hu, (1.0, 1.0, 1.0))
    full = predict_auto3d(loaded, image)
    assert set(np.unique(full)) >= {1, 2, 3}
    subset = predict_auto3d(loaded, image, structures=["s2", 3])
    np.testing.assert_array_equal(subset, np.where(np.isin(full, [2, 3]), full, 0))
    with pytest.raises(MedsegError, match="Unknown structure 'liver'"):
        predict_auto3d(loaded, image, structures=["liver"])


def test_unusable_images_are_refused():
    loaded = model(WindowNet())
    with pytest.raises(MedsegError, match="3-D volumes"):
        predict_auto3d(loaded, lps_image(np.zeros((40, 40), np.int16), (1.0, 1.0), np.eye(2), (0.0, 0.0)))
    rgb = Image(np.zeros((8, 8, 8, 3), np.uint8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), channel_axis=3)
    with pytest.raises(MedsegError, match="single-channel"):
        predict_auto3d(loaded, rgb)
    with pytest.raises(MedsegError, match="dtype"):
        predict_auto3d(loaded, lps_image(np.zeros((8, 8, 8), np.int16), (1.0, 1.0, 1.0)), dtype="int8")


def test_progress_cancel_and_modality_warning():
    loaded = model(WindowNet(), roi=(16, 16, 16), spacing=(1.0, 1.0, 1.0))
    image = lps_image(np.full((20, 40, 40), 100, np.int16), (1.0, 1.0, 1.0), modality="MR")
    reports, warnings = [], []
    predict_auto3d(loaded, image, progress=lambda done, total, message: reports.append((done, total)),
                   warn=warnings.append)
    windows = reports[-1][1]
    assert windows == 2 * 4 * 4 and reports[-1][0] == windows
    assert [done for done, total in reports if total == windows] == list(range(windows + 1))
    assert len(warnings) == 1 and "trained on CT" in warnings[0]
    calls = []
    with pytest.raises(Cancelled):
        predict_auto3d(loaded, image, cancel=lambda: calls.append(1) or len(calls) > 3, warn=warnings.append)


def test_out_of_memory_retries_one_window_at_a_time():
    class Hungry(WindowNet):
        def forward(self, x):
            if x.shape[0] > 1:
                raise torch.OutOfMemoryError("simulated")
            return super().forward(x)

    loaded = model(Hungry(), roi=(16, 16, 16), spacing=(1.0, 1.0, 1.0))
    hu = np.random.default_rng(2).integers(-1000, 1500, size=(20, 30, 30)).astype(np.int16)
    messages = []
    labels = predict_auto3d(loaded, lps_image(hu, (1.0, 1.0, 1.0)), batch_size=4, warn=messages.append)
    assert len(messages) == 1 and "retrying on cpu with 1" in messages[0]
    np.testing.assert_array_equal(labels, predict_auto3d(model(WindowNet(), (16, 16, 16), (1.0, 1.0, 1.0)),
                                                         lps_image(hu, (1.0, 1.0, 1.0))))


def test_swin_smt_checkpoint_end_to_end(tmp_path):
    """A real (small) Swin SMT saved with a 64^3 window: the pipeline is RAS + scaling + one padded window."""
    from napari_medseg.models.swin_smt import SwinSMT, save_swin_smt_checkpoint

    torch.manual_seed(0)
    network = SwinSMT(in_channels=1, out_channels=3, feature_size=12, use_v2=True, num_experts=4)
    classes = {0: "background", 1: "bone", 2: "tissue"}
    path = save_swin_smt_checkpoint(network, tmp_path / "small.pth", classes, spacing=(1.5, 1.5, 1.5),
                                    roi_size=(64, 64, 64))
    loaded = load_checkpoint(path)
    assert loaded.preprocessing["roi_size"] == (64, 64, 64)
    hu, _ = phantom((40, 52, 46), (1.5, 1.5, 1.5))
    ras = np.diag([-1.0, -1.0, 1.0])  # LPS direction whose index axes point to R, A, S
    labels = predict_auto3d(loaded, lps_image(hu, (1.5, 1.5, 1.5), ras))

    volume = torch.from_numpy(hu.transpose(2, 1, 0).astype(np.float32))  # numpy (z, y, x) -> (R, A, S)
    scaled = ((volume + 1024) / CLIP_SCALE).clamp(0, 1)
    padded = torch.nn.functional.pad(scaled, (12, 12, 6, 6, 9, 9))  # symmetric to 64^3 as MONAI
    with torch.no_grad():
        expected = network.eval()(padded[None, None])[0].argmax(0)[9:55, 6:58, 12:52]
    np.testing.assert_array_equal(labels, expected.numpy().transpose(2, 1, 0))
    assert set(np.unique(labels)) <= set(classes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_precisions_and_cpu_accumulation_agree_with_cpu(monkeypatch):
    from napari_medseg.models.swin_smt import SwinSMT

    torch.manual_seed(0)
    network = SwinSMT(in_channels=1, out_channels=4, feature_size=24, use_v2=False, num_experts=8)
    loaded = model(network, roi=(64, 64, 64))
    hu, _ = phantom((70, 80, 90), (1.5, 1.5, 1.5))
    image = lps_image(hu, (1.5, 1.5, 1.5))
    cpu = predict_auto3d(loaded, image, device="cpu")
    agreement = {dtype: (predict_auto3d(loaded, image, device="cuda", dtype=dtype) == cpu).mean()
                 for dtype in ("float32", "float16", "bfloat16")}
    # random weights give near-ties; float32 differs only by TF32 convolutions
    assert agreement["float32"] > 0.999 and agreement["float16"] > 0.99 and agreement["bfloat16"] > 0.97, agreement
    reference = predict_auto3d(loaded, image, device="cuda", dtype="float32")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 20, 1 << 30))
    messages = []
    on_cpu = predict_auto3d(loaded, image, device="cuda", dtype="float32", warn=messages.append)
    assert any("Accumulating logits on the CPU" in m for m in messages)
    np.testing.assert_array_equal(on_cpu, reference)
