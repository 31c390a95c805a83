"""The model registry: one card per model in ``resources/models`` plus the user's own trained
models in ``$MEDSEG_HOME/models`` (MONAI Label's one-config-per-model, TotalSegmentator's single
source of truth)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from ..errors import MedsegError
from .loaded import TASKS

TASK_LABELS = {
    "box2d": "box prompt (2D)",
    "auto2d": "automatic (2D)",
    "text2d": "text-guided (2D)",
    "auto3d": "automatic (3D)",
}


@dataclass
class WeightFile:
    file: str
    sha256: str | None = None
    size: int | None = None
    url: str | None = None
    license: str | None = None
    manual_download: bool = False
    bundled: dict | None = None  # {package, path}: shipped inside an installed package
    role: str = "weights"  # or "backbone": initialisation only
    published: bool = True  # False: the authors publish no trained file (``url`` is then their code)
    source_note: str | None = None  # which file to take where ``url`` holds several (a folder)


@dataclass
class ModelCard:
    id: str
    family: str
    name: str
    task: str
    description: str = ""
    modalities: list[str] = field(default_factory=list)
    input: dict = field(default_factory=dict)
    architecture: dict = field(default_factory=dict)  # what the family module's architecture(state) must report
    classes: dict[int, str] | str = field(default_factory=dict)
    weights: list[WeightFile] = field(default_factory=list)
    citation: str = ""
    provenance: dict = field(default_factory=dict)  # for user-trained models: base model, data, metrics
    decoder_from: str | None = None  # another model whose weights supply the prompt encoder and mask decoder
    text_tower: str | None = None  # text-guided models: the language model the checkpoint needs
    source: Path | None = None

    @property
    def weight(self) -> WeightFile:
        return self.weights[0]

    @property
    def is_user_model(self) -> bool:
        return bool(self.provenance)

    def class_names(self) -> dict[int, str]:
        """Class names; a string names a class table in ``resources/classes``."""
        if isinstance(self.classes, dict):
            return {int(k): str(v) for k, v in self.classes.items()}
        if self.classes == "from checkpoint":
            return {}
        return class_table(self.classes)["names"]


def class_table(name: str) -> dict:
    """A class table from ``resources/classes/<name>.json`` with names, colours, groups and (where the table has
    them) terminology codes by label: {"category", "type"[, "modifier", "region", "region_modifier"]}, each
    (coding scheme, code value, code meaning)."""
    text = resources.files("napari_medseg.resources").joinpath("classes", f"{name}.json").read_text()
    table = json.loads(text)
    return {
        "names": {int(k): v["name"] for k, v in table["classes"].items()},
        "colors": {int(k): v.get("color") for k, v in table["classes"].items()},
        "groups": {int(k): v.get("group") for k, v in table["classes"].items()},
        "codes": {int(k): {field: tuple(v[field]) for field in _CODE_FIELDS if field in v}
                  for k, v in table["classes"].items() if "type" in v},
    }


_CODE_FIELDS = ("category", "type", "modifier", "region", "region_modifier")


def card_from_dict(data: dict, source: Path | None = None) -> ModelCard:
    data = dict(data)
    if data.get("task") not in TASKS:
        raise MedsegError(f"Model card {source or data.get('id')}: task must be one of {TASKS}")
    data["weights"] = [WeightFile(**w) for w in data.get("weights", [])]
    return ModelCard(**data, source=source)


@lru_cache(maxsize=1)
def _builtin_cards() -> tuple[ModelCard, ...]:
    folder = resources.files("napari_medseg.resources").joinpath("models")
    cards = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            cards.append(card_from_dict(yaml.safe_load(entry.read_text()), Path(str(entry))))
    return tuple(cards)


def _user_cards() -> list[ModelCard]:
    from .weights import medseg_home

    cards = []
    for path in sorted((medseg_home() / "models").glob("*/card.yaml")):
        try:
            cards.append(card_from_dict(yaml.safe_load(path.read_text()), path))
        except Exception as exc:  # a damaged user card must not hide the others
            import warnings

            warnings.warn(f"Skipping model card {path}: {exc}", stacklevel=2)
    return cards


def list_cards() -> list[ModelCard]:
    return [*_builtin_cards(), *_user_cards()]


def get_card(model_id: str) -> ModelCard:
    for card in list_cards():
        if card.id == model_id:
            return card
    known = ", ".join(c.id for c in list_cards())
    raise MedsegError(f"Unknown model {model_id!r}. Known models: {known}")
