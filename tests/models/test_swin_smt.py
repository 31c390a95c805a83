"""Swin SMT: Soft-MoE semantics, official key layouts, checkpoint formats and class names."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
F = torch.nn.functional

from napari_medseg.errors import CheckpointError  # noqa: E402
from napari_medseg.models import load_checkpoint  # noqa: E402
from napari_medseg.models.soft_moe import DynamicSlotsSoftMoE  # noqa: E402
from napari_medseg.models.swin_smt import (  # noqa: E402
    LegacyPatchMerging,
    SwinSMT,
    build,
    infer_config,
    save_swin_smt_checkpoint,
    sniff,
)

KEYS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "keys"
CLASS_TABLE = Path(__file__).resolve().parents[2] / "resources" / "classes" / "totalsegmentator_v2.json"
README = dict(in_channels=1, out_channels=118, feature_size=48, use_v2=True, num_experts=4, moe_stages=3)
PAPER = dict(in_channels=1, out_channels=118, feature_size=48, use_v2=False, num_experts=32, moe_stages=3)
SMALL = dict(in_channels=1, out_channels=5, feature_size=12, use_v2=True, num_experts=4, moe_stages=3)


def official_soft_moe(moe: DynamicSlotsSoftMoE, x: torch.Tensor):
    """Transcription of the official DynamicSlotsSoftMoE.forward (x: b n d), padding mask included.
    Returns the output and the dispatch weights (b n e s)."""
    experts, n = moe.num_experts, x.shape[1]
    x = F.normalize(x, dim=-1) * moe.norm.scale * moe.norm.gamma
    pad = -n % experts
    mask = F.pad(torch.ones(x.shape[:2], dtype=torch.bool), (0, pad), value=False)
    x = F.pad(x, (0, 0, 0, pad))
    b, total, d = x.shape
    segments = x.view(b, total // experts, experts, d) * mask.view(b, -1, experts, 1)
    means = segments.sum(2) / mask.view(b, -1, experts).sum(-1, keepdim=True).clamp(min=1e-5)
    projection, _, slot_norm = moe.to_slot_embeds
    slot_embeds = (means @ projection.weight.T).view(b, -1, experts, d).permute(0, 2, 1, 3)  # b e s d
    slot_embeds = F.normalize(slot_embeds, dim=-1) * slot_norm.scale * slot_norm.gamma
    logits = torch.einsum("bnd,besd->bnes", x, slot_embeds)
    logits = logits.masked_fill(~mask.view(b, total, 1, 1), -torch.finfo(logits.dtype).max)
    dispatch = logits.softmax(dim=1)
    combine = logits.reshape(b, total, -1).softmax(dim=-1)
    slots = torch.einsum("bnd,bnes->ebsd", x, dispatch)
    out = torch.stack([expert(s) for s, expert in zip(slots, moe.experts)])
    out = torch.einsum("bsd,bns->bnd", out.permute(1, 0, 2, 3).reshape(b, -1, d), combine)
    return out[:, :n], dispatch[:, :n]


def randomised_moe(dim: int, experts: int, seed: int) -> DynamicSlotsSoftMoE:
    torch.manual_seed(seed)
    moe = DynamicSlotsSoftMoE(dim, num_experts=experts).double()
    with torch.no_grad():
        moe.norm.gamma.copy_(1 + 0.3 * torch.randn(dim))
        moe.to_slot_embeds[2].gamma.copy_(1 + 0.3 * torch.randn(dim))
        for expert in moe.experts:
            expert[0].bias.normal_(0, 0.1)
            expert[3].bias.normal_(0, 0.1)
    return moe


@pytest.mark.parametrize(
    "shape, experts",
    [((2, 8, 8, 8, 24), 4), ((2, 509, 24), 4), ((1, 100, 16), 32), ((2, 3, 5, 7, 16), 8), ((1, 12, 32), 32)],
)
def test_soft_moe_matches_official_formulation(shape, experts):
    moe = randomised_moe(shape[-1], experts, seed=sum(shape))
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected, dispatch = official_soft_moe(moe, x.reshape(shape[0], -1, shape[-1]))
    n = expected.shape[1]
    assert dispatch.amax(dim=1).median() > 5 / n  # routing is far from uniform: the test is not degenerate
    got = moe(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got.reshape(expected.shape), expected, rtol=1e-10, atol=1e-10)


def test_soft_moe_gradients_match_official():
    moe = randomised_moe(16, 4, seed=5)
    x = torch.randn(2, 70, 16, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 70, 16, dtype=torch.float64)
    (moe(x) * weights).sum().backward()
    ours = [p.grad.clone() for p in moe.parameters()] + [x.grad.clone()]
    moe.zero_grad()
    x.grad = None
    (official_soft_moe(moe, x)[0] * weights).sum().backward()
    theirs = [p.grad for p in moe.parameters()] + [x.grad]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_legacy_patch_merging_keeps_duplicated_slices():
    merging = LegacyPatchMerging(dim=3).double()
    x = torch.randn(1, 4, 6, 5, 3, dtype=torch.float64)
    padded = F.pad(x, (0, 0, 0, 1))
    official = [
        padded[:, 0::2, 0::2, 0::2], padded[:, 1::2, 0::2, 0::2], padded[:, 0::2, 1::2, 0::2],
        padded[:, 0::2, 0::2, 1::2], padded[:, 1::2, 0::2, 1::2], padded[:, 0::2, 1::2, 0::2],
        padded[:, 0::2, 0::2, 1::2], padded[:, 1::2, 1::2, 1::2],
    ]
    expected = merging.reduction(merging.norm(torch.cat(official, dim=-1)))
    torch.testing.assert_close(merging(x), expected)


def _key_file(name: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (KEYS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, _ = line.split("\t")
            shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


@pytest.mark.parametrize(
    "config, parameters, entries, key_file",
    [(README, 83_628_616, 257, "swinsmt.txt"), (PAPER, 170_783_560, 921, "swinsmt_v1_e32.txt")],
    ids=["readme", "paper"],
)
def test_official_configurations(config, parameters, entries, key_file):
    network = SwinSMT(**config)
    state = network.state_dict()
    assert sum(p.numel() for p in network.parameters()) == parameters
    assert len(state) == entries
    assert sniff(state) == "swin_smt"
    inferred = infer_config(state)
    assert {k: inferred[k] for k in config} == config
    assert inferred["depths"] == [2, 2, 2, 2] and inferred["num_heads"] == [3, 6, 12, 24]
    if (KEYS / key_file).exists():
        assert {k: tuple(v.shape) for k, v in state.items()} == _key_file(key_file)


def _small_state(seed=0, **changes):
    torch.manual_seed(seed)
    return SwinSMT(**{**SMALL, **changes}).state_dict()


V1_E8 = {"use_v2": False, "num_experts": 8, "moe_stages": 2}


@pytest.mark.parametrize(
    "wrap, changes",
    [("plain", {}), ("plain", V1_E8), ("state_dict", {}), ("model", V1_E8), ("module", {}), ("lightning", V1_E8)],
    ids=["plain-v2e4", "plain-v1e8", "state_dict-v2e4", "model-v1e8", "module-v2e4", "lightning-v1e8"],
)
def test_checkpoint_formats_load_strictly(tmp_path, wrap, changes):
    state = _small_state(**changes)
    stored = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "module": {f"module.{k}": v for k, v in state.items()},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "global_step": 7},
    }[wrap]
    torch.save(stored, tmp_path / "smt.pth")
    loaded = load_checkpoint(tmp_path / "smt.pth")
    assert loaded.family == "swin_smt" and loaded.task == "auto3d"
    assert loaded.info["config"] == {**SMALL, **changes, "depths": [2] * 4, "num_heads": [3, 6, 12, 24]}
    assert loaded.preprocessing["roi_size"] == (128, 128, 128)
    assert loaded.preprocessing["spacing"] == (1.5, 1.5, 1.5)
    assert loaded.preprocessing["clip"] == (-1024.0, 1024.0)
    assert loaded.classes == {0: "background", 1: "class_1", 2: "class_2", 3: "class_3", 4: "class_4"}
    for key, value in loaded.network.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_own_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    network = SwinSMT(**SMALL)
    classes = {0: "background", 1: "liver", 2: "spleen", 3: "kidney", 4: "tumour"}
    path = save_swin_smt_checkpoint(network, tmp_path / "own.pth", classes, spacing=(1.0, 1.0, 2.0),
                                    extra={"epochs": 12, "dice": {"liver": 0.93}}, roi_size=(64, 64, 96))
    loaded = load_checkpoint(path)
    assert loaded.classes == classes
    assert loaded.preprocessing["spacing"] == (1.0, 1.0, 2.0)
    assert loaded.preprocessing["roi_size"] == (64, 64, 96)
    assert loaded.info["extra"] == {"epochs": 12, "dice": {"liver": 0.93}}
    assert loaded.info["checkpoint"] == "napari-medseg"
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value)
    with pytest.raises(CheckpointError, match="multiples of 32"):
        save_swin_smt_checkpoint(network, tmp_path / "bad.pth", classes, roi_size=(48, 64, 64))


def test_totalsegmentator_names_for_118_outputs():
    loaded = build(_small_state(out_channels=118))
    assert len(loaded.classes) == 118
    assert loaded.classes[0] == "background" and loaded.classes[1] == "spleen"
    assert loaded.classes[51] == "heart" and loaded.classes[117] == "costal_cartilages"


def test_class_table_follows_totalsegmentator_order():
    table = json.loads(CLASS_TABLE.read_text())["classes"]
    assert sorted(int(k) for k in table) == list(range(118))
    names = [table[str(i)]["name"] for i in range(118)]
    assert len(set(names)) == 118
    expected = {25: "sacrum", 26: "vertebrae_S1", 50: "vertebrae_C1", 64: "portal_vein_and_splenic_vein",
                90: "brain", 91: "skull", 92: "rib_left_1", 103: "rib_left_12", 104: "rib_right_1", 116: "sternum"}
    assert {i: names[i] for i in expected} == expected
    colors = [tuple(table[str(i)]["color"]) for i in range(1, 118)]
    assert len(set(colors)) == 117 and all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)
    groups = {table[str(i)]["group"] for i in range(1, 118)}
    assert groups == {"organs", "vertebrae", "muscles", "ribs", "vessels", "others"}
    assert [table[i]["group"] for i in ("80", "52", "30", "5")] == ["muscles", "vessels", "vertebrae", "organs"]


def test_wrong_files_are_refused(tmp_path):
    from monai.networks.nets import SwinUNETR

    plain_swin_unetr = SwinUNETR(in_channels=1, out_channels=3, feature_size=12).state_dict()
    assert sniff(plain_swin_unetr) is None
    assert sniff({"network_weights": {"conv.weight": torch.zeros(1)}, "init_args": {}}) is None
    torch.save(plain_swin_unetr, tmp_path / "unetr.pth")
    with pytest.raises(CheckpointError, match="not a 'swin_smt' checkpoint"):
        load_checkpoint(tmp_path / "unetr.pth", family="swin_smt")

    state = _small_state()
    with pytest.raises(CheckpointError, match="missing"):
        build({k: v for k, v in state.items() if not k.startswith("out.")})
    mlp_stage3 = {k: v for k, v in _small_state(moe_stages=1).items() if k.startswith("swinViT.layers3.")}
    with pytest.raises(CheckpointError, match="last stages"):  # MoE in stages 2 and 4 only
        build({k: v for k, v in state.items() if not k.startswith("swinViT.layers3.")} | mlp_stage3)
    stored = {"network_weights": state, "medseg": {"config": {**SMALL, "num_experts": 8}, "classes": {}}}
    with pytest.raises(CheckpointError, match="disagrees"):
        build(stored)
    truncated = tmp_path / "truncated.pth"
    torch.save(state, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated, family="swin_smt")
