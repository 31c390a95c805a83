"""The precision policy (issue 16): faithful by default everywhere, fast only when asked for.

The LiteMedSAM fidelity test compares the default path with the official recipe (CVPR24_LiteMedSAM_infer.py,
float32, implemented independently in fidelity_set.py) on 18 real-image boxes; the fast path's cost is
printed by benchmarks/precision_cpu.py.
"""
import numpy as np
import pytest
import torch

from napari_medseg.errors import MedsegError
from napari_medseg.inference.box2d import BoxPredictor, area_resize, to_uint8_rgb
from napari_medseg.inference.precision import policy_dtype, precision_policy
from napari_medseg.models import load_checkpoint
from napari_medseg.models import sam_family as sf


def test_policy_names_old_names_and_refusals():
    assert precision_policy(None) == precision_policy("faithful") == precision_policy("fp32") == "faithful"
    assert precision_policy("fast") == precision_policy("bf16") == "fast"
    for bad in ("auto", "fp16", "exact"):
        with pytest.raises(MedsegError, match="'faithful'.*'fast'"):
            precision_policy(bad)


def test_automatic_predictors_run_float32_unless_fast():
    cuda = torch.device("cuda")  # the faithful answer needs no GPU to be known
    assert policy_dtype("faithful", None, cuda) is torch.float32
    assert policy_dtype("fast", None, torch.device("cpu")) is torch.float32  # no reduced precision on CPU
    assert policy_dtype("fast", "float16", cuda) is torch.float16  # an explicit autocast type is kept
    with pytest.raises(MedsegError, match="precision"):
        policy_dtype("auto", None, cuda)


def test_segment_refuses_an_unknown_precision_before_loading():
    from napari_medseg import segment

    with pytest.raises(MedsegError, match="Unknown precision 'auto'"):
        segment(np.zeros((8, 8)), "no-such-model", box=(1, 1, 4, 4), precision="auto")


def vit_families():
    """SAM, MedSAM and LVM-Med ViT built from one toy SAM (random weights: the official ones are not offline)."""
    from test_box2d import toy_sam

    state = toy_sam(seed=2).state_dict()
    encoder = {k[len("image_encoder."):]: v for k, v in state.items()
               if k.startswith("image_encoder.") and "pos_embed" not in k}
    return {"sam": lambda: sf.build(state, "sam"), "medsam": lambda: sf.build(state, "medsam"),
            "lvm_med_vit": lambda: sf.build(encoder, "lvm_med_vit", decoder=state)}


@pytest.mark.parametrize("family", ["sam", "medsam", "lvm_med_vit", "lite_medsam"])
def test_default_box_predictor_embeds_in_float32_exactly(family):
    from skimage import data

    loaded = load_checkpoint(sf.bundled_lite_medsam_path()) if family == "lite_medsam" else vit_families()[family]()
    predictor = BoxPredictor(loaded, device="cpu")
    assert predictor.precision == "faithful"
    image = data.immunohistochemistry()[100:300, 50:250]
    predictor.set_image(image)
    x, _ = predictor.profile.encoder_input(to_uint8_rgb(image))
    with torch.inference_mode():
        expected = predictor._encode(x.contiguous(memory_format=torch.channels_last))
    assert expected.dtype is torch.float32 and torch.equal(predictor.embedding.features, expected)


@pytest.mark.parametrize("shape", [(233, 197), (50, 37), (200, 230), (128, 100), (3, 2)])
def test_area_resize_enlarges_bit_for_bit_like_opencv(shape):
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    h, w = shape
    size = (int(h * 256 / max(shape) + 0.5), int(w * 256 / max(shape) + 0.5))
    expected = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
    assert np.array_equal(area_resize(image, size), expected)


def test_faithful_lite_medsam_matches_the_official_recipe_on_real_boxes():
    pytest.importorskip("cv2")
    pytest.importorskip("nilearn")
    import fidelity_set

    loaded = load_checkpoint(sf.bundled_lite_medsam_path())
    results = fidelity_set.fidelity(BoxPredictor(loaded, device="cpu"), loaded.network)
    assert len(results) >= 15
    scores = {f"{image}/{box}": score for image, box, score in results}
    assert min(scores.values()) >= 0.98, {k: round(v, 4) for k, v in scores.items() if v < 0.98}
    assert np.mean(list(scores.values())) >= 0.99
