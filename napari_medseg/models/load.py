"""From a model id (or a weights file) to a ready `LoadedModel` on a device, cached in memory."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from ..device import resolve_device
from .families import load_checkpoint
from .loaded import LoadedModel
from .registry import get_card
from .weights import weights_path

_CACHE: OrderedDict[tuple, LoadedModel] = OrderedDict()
_CACHE_SIZE = 2
_LOCK = threading.Lock()


def load_model(model: str = "lite-medsam", weights: str | Path | None = None, device: str | None = None,
               **options) -> LoadedModel:
    """The model ``model`` (a registry id) with its installed weights or ``weights``, on ``device``."""
    card = get_card(model)
    path = Path(weights).expanduser() if weights else weights_path(card)
    if card.decoder_from and "decoder" not in options:
        options["decoder"] = str(weights_path(get_card(card.decoder_from)))
    dev = resolve_device(device)
    key = (card.id, str(path.resolve()), path.stat().st_mtime if path.exists() else 0, str(dev),
           tuple(sorted(options.items())))
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    loaded = load_checkpoint(path, family=card.family, **options)
    if not loaded.classes or (card.is_user_model and card.class_names()):
        loaded.classes = card.class_names() or loaded.classes
    loaded.info.setdefault("model_id", card.id)
    loaded.info.setdefault("model_name", card.name)
    loaded.to(dev)
    loaded.info["device"] = str(dev)
    with _LOCK:
        _CACHE[key] = loaded
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return loaded


def clear_model_cache() -> None:
    with _LOCK:
        _CACHE.clear()
