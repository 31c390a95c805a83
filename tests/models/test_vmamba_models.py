"""VMamba-based 2-D models: official key layouts, SS2D semantics, checkpoint parsing and loading."""
from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from napari_medseg.errors import CheckpointError  # noqa: E402
from napari_medseg.models import load_checkpoint  # noqa: E402
from napari_medseg.models.nnunet_checkpoint import (  # noqa: E402
    Labels,
    parse_nnunet_checkpoint,
    save_nnunet_checkpoint,
)
from napari_medseg.models.swin_umamba import SwinUMamba, SwinUMambaD  # noqa: E402
from napari_medseg.models.vm_unet import VMUNet  # noqa: E402
from napari_medseg.models.vmamba import SS2D, PatchExpand2D, PatchMerging2D  # noqa: E402
from test_scan import reference_scan  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared"
KEYS = SHARED / "reference" / "keys"

# (entries, parameters, sha256 of the sorted "key [shape]" lines) of the official state_dicts
OFFICIAL_LAYOUTS = {
    "swin_umamba": (lambda: SwinUMamba(1, 14), 257, 59_889_368, "b1b7d2e41fa4c6a2"),
    "swin_umamba_d": (lambda: SwinUMambaD(1, 14), 312, 27_497_720, "a0f1f03f6850e853"),
    "vm_unet_isic": (lambda: VMUNet(3, 1), 222, 27_427_561, "872a43dd4ec3ea60"),
    "vm_unet_synapse": (lambda: VMUNet(3, 9), 222, 27_427_761, "3092ff1ae16dc39c"),
}


def layout_signature(shapes: dict) -> str:
    lines = sorted(f"{key} {list(shape)}" for key, shape in shapes.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", OFFICIAL_LAYOUTS)
def test_state_dict_layout_is_official(name):
    factory, entries, parameters, signature = OFFICIAL_LAYOUTS[name]
    network = factory()
    shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    assert len(shapes) == entries
    assert sum(math.prod(s) for s in shapes.values()) == parameters
    assert layout_signature(shapes) == signature
    norms = [m for m in network.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-5 for m in norms)  # the official callers all pass nn.LayerNorm
    for m in network.modules():
        if isinstance(m, torch.nn.InstanceNorm2d):  # affine-free (MONAI) except the stem, never running stats
            assert not m.track_running_stats


# ------------------------------------------------------------------------------ building blocks


def official_ss2d(module: SS2D, x: torch.Tensor) -> torch.Tensor:
    """Transcription of the official SS2D.forward / forward_core with selective_scan_ref."""
    B, H, W, _ = x.shape
    L, K = H * W, 4
    xz = module.in_proj(x)
    x, z = xz.chunk(2, dim=-1)
    x = F.silu(module.conv2d(x.permute(0, 3, 1, 2).contiguous()))
    x_hwwh = torch.stack([x.view(B, -1, L), torch.transpose(x, 2, 3).contiguous().view(B, -1, L)], dim=1)
    xs = torch.cat([x_hwwh, torch.flip(x_hwwh, dims=[-1])], dim=1)
    x_dbl = torch.einsum("b k d l, k c d -> b k c l", xs.view(B, K, -1, L), module.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [module.dt_rank, module.d_state, module.d_state], dim=2)
    dts = torch.einsum("b k r l, k d r -> b k d l", dts.view(B, K, -1, L), module.dt_projs_weight)
    out_y = reference_scan(xs.float().view(B, -1, L), dts.contiguous().float().view(B, -1, L),
                           -torch.exp(module.A_logs.float()).view(-1, module.d_state), Bs.float(), Cs.float(),
                           module.Ds.float().view(-1), delta_bias=module.dt_projs_bias.float().view(-1),
                           delta_softplus=True).view(B, K, -1, L)
    inv_y = torch.flip(out_y[:, 2:4], dims=[-1]).view(B, 2, -1, L)
    wh_y = torch.transpose(out_y[:, 1].view(B, -1, W, H), 2, 3).contiguous().view(B, -1, L)
    invwh_y = torch.transpose(inv_y[:, 1].view(B, -1, W, H), 2, 3).contiguous().view(B, -1, L)
    y = out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y
    y = module.out_norm(torch.transpose(y, 1, 2).contiguous().view(B, H, W, -1))
    return module.out_proj(y * F.silu(z))


def perturbed_ss2d(d_model: int, d_state: int = 16) -> SS2D:
    torch.manual_seed(0)
    module = SS2D(d_model, d_state=d_state).eval()
    with torch.no_grad():  # every parameter away from its initial value (LayerNorm's 1/0 included)
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def test_ss2d_matches_official_on_non_square_maps():
    module = perturbed_ss2d(8)
    with torch.no_grad():
        x = torch.randn(2, 5, 7, 8)  # H != W: a row/column mix-up in the cross-scan would show
        got, expected = module(x), official_ss2d(module, x)
    assert ((got - expected).abs().max() / expected.abs().max()) < 1e-5


@pytest.mark.gpu
def test_cuda_layer_norm_keeps_half_activations_for_inference():
    from napari_medseg.models.vmamba import LayerNorm

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    norm = LayerNorm(96).cuda()
    with torch.no_grad():
        norm.weight.add_(torch.randn_like(norm.weight))
        norm.bias.add_(torch.randn_like(norm.bias))
    x = 3 + torch.randn(4, 16, 16, 96, device="cuda")
    expected = F.layer_norm(x, (96,), norm.weight, norm.bias, norm.eps)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with torch.no_grad():
            half = norm(x.bfloat16())
        trained = norm(x.bfloat16())  # with gradients: autocast's fp32 layer norm
    assert half.dtype == torch.bfloat16 and trained.dtype == torch.float32
    assert ((half.float() - expected).abs().max() / expected.abs().max()) < 2e-2


def test_patch_merging_and_expand_orders():
    merge = PatchMerging2D(1)
    merge.norm = torch.nn.Identity()
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.eye(2, 4))  # keep x0 (even row, even col) and x1 (odd row, even col)
    x = torch.arange(16.0).view(1, 4, 4, 1)
    assert merge(x)[0, 0, 0].tolist() == [0.0, 4.0]
    assert merge(x)[0, 1, 0].tolist() == [8.0, 12.0]
    assert merge(torch.randn(1, 5, 7, 1)).shape == (1, 2, 3, 2)  # odd sizes lose the last row/column
    expand = PatchExpand2D(4, 1, scale=2)
    expand.norm = torch.nn.Identity()
    with torch.no_grad():
        expand.expand.weight.copy_(torch.eye(4))
    # 'b h w (p1 p2 c) -> b (h p1) (w p2) c': channel 2 * p1 + p2 lands at row p1, column p2
    assert expand(torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]]))[0, :, :, 0].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_deep_supervision_outputs():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        d = SwinUMambaD(2, 3, deep_supervision=True).eval()
        assert [o.shape[-1] for o in d(x)] == [64, 16, 8, 4]
        d.decoder.deep_supervision = False
        assert d(x).shape == (1, 3, 64, 64)
        net = VMUNet(3, 1).eval()
        grey = net(x[:, :1])
        assert grey.shape == (1, 1, 64, 64) and 0 <= grey.min() and grey.max() <= 1
        assert torch.equal(grey, net(x[:, :1].repeat(1, 3, 1, 1)))


# ------------------------------------------------------------------------ nnU-Net checkpoints


def small_plans(channels, patch=(64, 64), normalization=None):
    config = {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "spacing": [1.0, 1.0],
        "normalization_schemes": normalization or ["ZScoreNormalization"] * len(channels),
        "use_mask_for_norm": [False] * len(channels),
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
    }
    properties = {str(c): {"mean": 100.0, "std": 20.0, "percentile_00_5": 10.0, "percentile_99_5": 200.0}
                  for c in range(len(channels))}
    return {
        "dataset_name": "Dataset999_Test", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"2d": config, "2d_small": {"inherits_from": "2d", "batch_size": 1}},
        "foreground_intensity_properties_per_channel": properties,
    }


def dataset_json(channels, labels):
    return {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
            "numTraining": 1, "file_ending": ".png", "name": "Dataset999_Test"}


def rule_weights(name: str, in_chans: int, classes: int) -> dict:
    """The conformance rule's weights for an official key file, with the input/class counts changed."""
    if not (KEYS / f"{name}.txt").exists():
        pytest.skip("needs ../shared/reference/keys and ../shared/conformance")
    spec = importlib.util.spec_from_file_location("weights_rule", SHARED / "conformance" / "weights_rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    entries = []
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        shape = eval(shape)  # "[48, 1, 7, 7]"
        first = "vssm_encoder.patch_embed.proj.weight" if name == "swin_umamba_d" else "stem.0.weight"
        if key in (first, "encoder1.layer.conv1.conv.weight", "encoder1.layer.conv3.conv.weight"):
            shape[1] = in_chans
        if key.startswith(("out_layers.", "decoder.seg_layers.")):
            shape[0] = classes
        entries.append((key, shape, dtype))
    return rule.state_dict_for(entries)


@pytest.mark.parametrize("family,keys", [("swin_umamba", "swin_umamba"), ("swin_umamba_d", "swin_umamba_d")])
def test_nnunet_checkpoint_with_other_channels_and_classes(tmp_path, family, keys):
    channels = ["R", "G", "B"]
    labels = {"background": 0, "tool shaft": 1, "tool clasper": 2, "tool wrist": 3, "kidney": 4}
    weights = rule_weights(keys, 3, len(labels))
    trainer = "nnUNetTrainerSwinUMambaDScratch" if family == "swin_umamba_d" else "nnUNetTrainerSwinUMamba"
    path = save_nnunet_checkpoint(tmp_path / "checkpoint_final.pth", weights, trainer_name=trainer,
                                  plans=small_plans(channels), configuration="2d_small",
                                  dataset_json=dataset_json(channels, labels), epoch=250)
    loaded = load_checkpoint(path)  # family guessed from the contents
    assert loaded.family == family and loaded.task == "auto2d"
    assert loaded.classes == {0: "background", 1: "tool shaft", 2: "tool clasper", 3: "tool wrist", 4: "kidney"}
    pre = loaded.preprocessing
    assert pre["patch_size"] == [64, 64] and pre["channels"] == channels and pre["mirror_axes"] == [0, 1]
    assert [n["scheme"] for n in pre["normalization"]] == ["ZScoreNormalization"] * 3
    assert loaded.info["trainer"] == trainer and loaded.info["epoch"] == 250
    with torch.no_grad():
        out = loaded.network(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 5, 64, 64) and torch.isfinite(out).all()


def test_checkpoint_contents_are_checked(tmp_path):
    weights = rule_weights("swin_umamba_d", 1, 3)
    labels = {"background": 0, "a": 1, "b": 2}
    common = dict(trainer_name="nnUNetTrainerSwinUMambaD", plans=small_plans(["MR"]), configuration="2d")
    bad = save_nnunet_checkpoint(tmp_path / "two_labels.pth", weights, **common,
                                 dataset_json=dataset_json(["MR"], {"background": 0, "a": 1}))
    with pytest.raises(CheckpointError, match="3 outputs.*2 outputs"):
        load_checkpoint(bad)
    good = save_nnunet_checkpoint(tmp_path / "ok.pth", weights, **common, dataset_json=dataset_json(["MR"], labels))
    with pytest.raises(CheckpointError, match="holds a swin_umamba_d network, not swin_umamba"):
        load_checkpoint(good, family="swin_umamba")
    torch.save(weights, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bare.pth", family="swin_umamba_d")
    with pytest.raises(CheckpointError, match="no configuration '3d_fullres'"):
        save_nnunet_checkpoint(tmp_path / "x.pth", weights, trainer_name="t", plans=small_plans(["MR"]),
                               configuration="3d_fullres", dataset_json=dataset_json(["MR"], labels))


def test_plans_parsing():
    plans = small_plans(["CT", "MR"], normalization=["CTNormalization", "ZScoreNormalization"])
    state = {"network_weights": {}, "trainer_name": "nnUNetTrainerSwinUMamba",
             "inference_allowed_mirroring_axes": (0, 1),
             "init_args": {"plans": plans, "configuration": "2d_small", "fold": 0,
                           "dataset_json": dataset_json(["CT", "MR"], {"background": 0, "lesion": "1"})}}
    checkpoint = parse_nnunet_checkpoint(state)
    assert checkpoint.configuration["batch_size"] == 1 and checkpoint.configuration["patch_size"] == [64, 64]
    pre = checkpoint.preprocessing()
    assert pre["normalization"][0] == {"scheme": "CTNormalization", "use_mask": False, "mean": 100.0, "std": 20.0,
                                       "lower": 10.0, "upper": 200.0}
    assert pre["output"] == "softmax" and pre["resampling_data"]["kwargs"]["order"] == 3
    assert pre["resampling_probabilities"]["kwargs"]["order"] == 1
    assert checkpoint.labels.classes == {0: "background", 1: "lesion"}  # "1" as in LLM-Swin-UMamba's dataset.json
    regions = Labels.from_dataset_json({"labels": {"background": 0, "whole tumor": [1, 2, 3], "core": [2, 3],
                                                   "enhancing": 3}, "regions_class_order": [1, 2, 3]})
    assert regions.heads == 3 and regions.regions == [(1, 2, 3), (2, 3), (3,)]
    assert regions.classes == {0: "background", 1: "whole tumor", 2: "core", 3: "enhancing"}


# ----------------------------------------------------------------------------------- VM-UNet


@pytest.mark.parametrize("keys,classes", [("vm_unet_isic", 1), ("vm_unet_synapse", 9)])
def test_vm_unet_state_dicts(tmp_path, keys, classes):
    if not (KEYS / f"{keys}.txt").exists():
        pytest.skip("needs ../shared/reference/keys")
    weights = rule_weights(keys, 3, classes)
    torch.save(weights, tmp_path / "best.pth")
    loaded = load_checkpoint(tmp_path / "best.pth")
    assert loaded.family == "vm_unet" and loaded.task == "auto2d"
    assert loaded.info["depths"] == [2, 2, 2, 2] and loaded.info["depths_decoder"] == [2, 2, 2, 1]
    with torch.no_grad():
        out = loaded.network(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, classes, 64, 96)
    if classes == 1:
        assert loaded.classes == {0: "background", 1: "lesion"} and 0 <= out.min() and out.max() <= 1
        assert loaded.preprocessing["input_size"] == [256, 256]
    else:
        assert loaded.classes[1] == "aorta" and loaded.classes[8] == "stomach"
        assert loaded.preprocessing["input_size"] == [224, 224]
    torch.save({"epoch": 3, "model_state_dict": weights}, tmp_path / "latest.pth")  # train.py's resume file
    assert load_checkpoint(tmp_path / "latest.pth").family == "vm_unet"
