"""Register a trained model as a user model: ``$MEDSEG_HOME/models/<id>/card.yaml`` beside its weights,
with a ``provenance`` record (base model, data hash, epochs, metrics, date). The registry lists it
from then on; ``load_model(<id>)`` loads it like any other model.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import yaml

from napari_medseg.atomic import atomic_write_text, replacing
from napari_medseg.errors import MedsegError

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def default_model_id(base_id: str) -> str:
    return f"{base_id}-ft-{time.strftime('%Y%m%d-%H%M%S')}"


def check_model_id(model_id: str) -> str:
    from napari_medseg.models.registry import list_cards

    if not _ID.match(model_id):
        raise MedsegError(f"Model id {model_id!r}: use lower-case letters, digits, '.', '-' or '_' (at most 64)")
    if any(card.id == model_id and not card.is_user_model for card in list_cards()):
        raise MedsegError(f"{model_id!r} is a built-in model id; choose another name")
    return model_id


def register_model(weights: str | Path, *, model_id: str, base_card, family: str, task: str,
                   classes: dict[int, str], provenance: dict, name: str | None = None,
                   input_spec: dict | None = None, replace: bool = True):
    """Copy ``weights`` into ``$MEDSEG_HOME/models/<model_id>/`` and write its card; returns the `ModelCard`."""
    from napari_medseg.models.checkpoint import sha256_of
    from napari_medseg.models.registry import get_card
    from napari_medseg.models.weights import medseg_home

    check_model_id(model_id)
    weights = Path(weights)
    folder = medseg_home() / "models" / model_id
    if folder.exists() and not replace:
        raise MedsegError(f"A user model {model_id!r} already exists")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights.name
    if weights.resolve() != target.resolve():
        with replacing(target, verify=lambda temp: _same_size(temp, weights)) as temp:
            shutil.copyfile(weights, temp)
    card = {
        "id": model_id,
        "family": family,
        "name": name or f"{base_card.name} (fine-tuned {time.strftime('%Y-%m-%d %H:%M')})",
        "task": task,
        "description": f"Fine-tuned from {base_card.id} on the user's labels with napari-medseg.",
        "modalities": list(base_card.modalities),
        "input": dict(input_spec if input_spec is not None else base_card.input),
        "classes": {int(k): str(v) for k, v in sorted(classes.items())},
        "weights": [{"file": target.name, "sha256": sha256_of(target), "size": target.stat().st_size,
                     "license": "trained locally; the base model's license applies"}],
        "citation": base_card.citation,
        "provenance": {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "base_model": base_card.id, **provenance},
    }
    atomic_write_text(folder / "card.yaml", yaml.safe_dump(card, sort_keys=False))
    return get_card(model_id)


def _same_size(copy: Path, source: Path) -> None:
    if copy.stat().st_size != source.stat().st_size:  # a short copy (full disk) never becomes the model
        raise MedsegError(f"Cannot register {source.name}: the copy is incomplete (disk full?)")
