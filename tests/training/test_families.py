"""Family adapters: real LiteMedSAM fine-tuning on MNI white matter, and every automatic family's batches,
training step and file round trip (the saved file loads through ``load_checkpoint`` like an official one)."""
import importlib.util
import sys

import numpy as np
import pytest
import torch

from napari_medseg.models.families import load_checkpoint
from napari_medseg.models.registry import get_card
from napari_medseg.training.datasets import Case, split_cases
from napari_medseg.training.families import TrainOptions, make_adapter, scratch_model
from napari_medseg.training.pipeline import initial_model
from napari_medseg.training.trainer import TrainConfig, train

SHARED_CONFORMANCE = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "conformance"
WM = {0: "background", 1: "white matter"}


def test_lite_medsam_fine_tuning_raises_held_out_dice(mni, tmp_path):
    t1, labels = mni
    train_case = Case("mni", t1, labels, {"all": False, "slices": [72, 108]})
    val_case = Case("mni held out", t1, labels, {"all": False, "slices": [90]})
    adapter = make_adapter(initial_model(get_card("lite-medsam")), "lite-medsam", "cpu")
    adapter.prepare([train_case], [val_case])
    assert adapter.sample_count() == 2 and adapter.validation_count() == 1
    adapter.eval_mode()
    with torch.no_grad():
        before = adapter.validate()
    result = train(adapter, TrainConfig(steps=8, batch_size=2, lr=3e-4, steps_per_epoch=4, warmup=0.1), tmp_path)
    assert result.best_dice > before + 0.15, (before, result.history)

    loaded = load_checkpoint(result.weights)  # a plain state_dict with the official keys
    assert loaded.family == "lite_medsam"
    saved = adapter.network.state_dict()
    assert all(torch.equal(v.cpu(), saved[k].cpu()) for k, v in loaded.network.state_dict().items())
    frozen = initial_model(get_card("lite-medsam")).network.state_dict()
    assert torch.equal(frozen["image_encoder.neck.0.weight"], saved["image_encoder.neck.0.weight"].cpu())
    assert not torch.equal(frozen["mask_decoder.iou_token.weight"], saved["mask_decoder.iou_token.weight"].cpu())


def _official_swin_umamba(tmp_path):
    spec = importlib.util.spec_from_file_location("make_checkpoint", SHARED_CONFORMANCE / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SHARED_CONFORMANCE))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SHARED_CONFORMANCE))
    return module.write_checkpoint(SHARED_CONFORMANCE / "swin_umamba_abdomenmr", tmp_path / "checkpoint_final.pth")


@pytest.mark.skipif(not (SHARED_CONFORMANCE / "swin_umamba_abdomenmr").is_dir(), reason="conformance cases absent")
def test_swin_umamba_fine_tune_gets_a_new_head_and_saves_an_nnunet_checkpoint(small_mni, tmp_path):
    official = load_checkpoint(_official_swin_umamba(tmp_path))
    assert len(official.classes) == 14
    encoder = {k: v.clone() for k, v in official.network.state_dict().items() if k.startswith("vssm_encoder.")}
    image, labels = small_mni
    train_cases, val_cases = split_cases([Case("mni", image, labels, classes=WM)])
    adapter = make_adapter(official, "swin-umamba", "cpu", TrainOptions(), WM)
    assert adapter.classes == WM  # the AbdomenMR head gave way to one for the user's class
    assert adapter.network.out_layers[0].conv.conv.out_channels == 2
    adapter.prepare(train_cases, val_cases)
    adapter.patch_size = (64, 64)  # keep the CPU step small; the plans' patch is used for real training
    batch = adapter.batch([0, 1], [np.random.default_rng(i) for i in range(2)])
    assert batch["image"].shape == (2, 1, 64, 64) and set(batch["target"].unique().tolist()) <= {0, 1}
    adapter.train_mode()
    loss = adapter.module(batch)
    loss.backward()
    assert torch.isfinite(loss) and adapter.network.out_layers[3].conv.conv.weight.grad is not None

    path = adapter.save(tmp_path / "out" / "checkpoint_final.pth", {"steps": 1})
    reloaded = load_checkpoint(path)
    assert reloaded.family == "swin_umamba" and reloaded.classes == WM
    assert reloaded.preprocessing == {**official.preprocessing, "regions_class_order": None}
    state = reloaded.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoder.items())


ROUND_TRIP = {  # model: (architecture of the new network, batch's spatial shape)
    "swin-umamba-d": ({"patch_size": [64, 64]}, (64, 64)),
    "vm-unet-synapse": ({"embed_dim": 24}, (224, 224)),
    "lvm-med-unet": ({}, (256, 256)),
    "llm-swin-umamba": ({}, (256, 256)),
    "swin-smt": ({"feature_size": 12, "use_v2": False, "num_experts": 8, "roi_size": [64, 64, 64],
                  "spacing": [4.0, 4.0, 4.0]}, (64, 64, 64)),  # the paper's v1 variant
}


@pytest.mark.parametrize("model", sorted(ROUND_TRIP))
def test_new_models_round_trip_through_their_file_format(model, small_mni, tmp_path):
    image, labels = small_mni
    cases = [Case("mni", image, labels, classes=WM, report="periventricular white matter, both hemispheres")]
    architecture, spatial = ROUND_TRIP[model]
    loaded = scratch_model(get_card(model), cases, architecture=architecture)
    adapter = make_adapter(loaded, model, "cpu", TrainOptions(architecture=architecture), WM)
    train_cases, val_cases = split_cases(cases)
    adapter.prepare(train_cases, val_cases)
    batch = adapter.batch([0], [np.random.default_rng(0)])
    assert batch["image"].shape[2:] == spatial and batch["target"].shape[1:] == spatial
    assert batch["target"].max() == 1 and batch["valid"].sum() > 0

    path = adapter.save(tmp_path / adapter.weights_file, {"steps": 0})
    reloaded = load_checkpoint(path, family=get_card(model).family)
    assert reloaded.task == loaded.task
    if model not in ("vm-unet-synapse", "lvm-med-unet"):  # plain state_dicts: the model card names the classes
        assert reloaded.classes == WM
    assert reloaded.preprocessing == loaded.preprocessing
    state = reloaded.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in adapter.network.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(ROUND_TRIP))
def test_new_models_train_a_few_steps(model, small_mni, tmp_path):
    image, labels = small_mni
    cases = [Case("mni", image, labels, classes=WM, report="periventricular white matter, both hemispheres")]
    architecture, _ = ROUND_TRIP[model]
    adapter = make_adapter(scratch_model(get_card(model), cases, architecture=architecture), model, "cpu",
                           TrainOptions(architecture=architecture), WM)
    adapter.prepare(*split_cases(cases))
    result = train(adapter, TrainConfig(steps=2, batch_size=2, lr=1e-3, steps_per_epoch=2), tmp_path)
    assert result.steps == 2 and result.best_dice is not None and np.isfinite(result.history[0]["loss"])


def test_slices_of_different_sizes_stack_with_the_padding_left_out_of_the_loss():
    from napari_medseg.training.auto2d import PreparedSlices, stack_slices

    small = PreparedSlices(np.ones((2, 3, 4, 1), np.float32), np.ones((2, 3, 4), np.int64), np.ones((2, 3, 4), bool))
    tall = PreparedSlices(np.full((1, 5, 2, 1), 2, np.float32), np.full((1, 5, 2), 2), np.ones((1, 5, 2), bool))
    stacked = stack_slices([small, tall])
    assert stacked.data.shape == (3, 5, 4, 1) and stacked.labels.shape == stacked.valid.shape == (3, 5, 4)
    assert stacked.valid[:2].sum() == 2 * 12 and stacked.valid[2].sum() == 10
    assert (stacked.data[2, :, :2] == 2).all() and (stacked.data[2, :, 2:] == 0).all()
    assert not stacked.valid[0, 3:].any() and (stacked.labels[0, 3:] == 0).all()


@pytest.mark.parametrize("precision", ["faithful", "fast"])
def test_automatic_validation_predicts_with_the_chosen_precision(precision, small_mni, monkeypatch):
    import napari_medseg.inference.auto2d as auto2d

    image, labels = small_mni
    cases = [Case("mni", image, labels, classes=WM)]
    architecture = ROUND_TRIP["swin-umamba-d"][0]
    adapter = make_adapter(scratch_model(get_card("swin-umamba-d"), cases, architecture=architecture), "swin-umamba-d",
                           "cpu", TrainOptions(architecture=architecture, precision=precision), WM)
    adapter.prepare(*split_cases(cases))
    asked = []

    def predict(loaded, image, **options):  # the inference entry point, recording what validation asks of it
        asked.append(options.get("precision"))
        return np.zeros(image.spatial_shape, np.uint8)

    monkeypatch.setattr(auto2d, "predict_auto2d", predict)
    adapter.validate()
    assert asked and set(asked) == {precision}


def test_lite_medsam_validation_uses_float32_embeddings(mni, monkeypatch):
    t1, labels = mni
    adapter = make_adapter(initial_model(get_card("lite-medsam")), "lite-medsam", "cpu")
    adapter.prepare([Case("mni", t1, labels, {"all": False, "slices": [90]})],
                    [Case("mni held out", t1, labels, {"all": False, "slices": [100]})])
    assert adapter.module.embeddings.dtype is torch.float16  # training reads the compact copies
    decoded = []
    decode = adapter.module.decode
    monkeypatch.setattr(adapter.module, "decode", lambda embeddings, boxes: decoded.append(embeddings) or decode(embeddings, boxes))
    adapter.eval_mode()
    with torch.no_grad():
        adapter.validate()
        x, _ = adapter.profile.encoder_input(adapter.rgb[adapter.val_keys[0]])
        expected = adapter.network.image_encoder(x)
    assert decoded and all(torch.equal(e, expected) for e in decoded)  # the faithful encoder's output, not fp16's
