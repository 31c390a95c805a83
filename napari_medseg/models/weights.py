"""Weights manager: where each model's files live, whether they are intact, and how to install them.

Layout under ``$MEDSEG_HOME`` (default: the user's cache folder)::

    weights/<model-id>/<official file name>
    weights/<model-id>/installed.json   sha256, size, source and time of each installed file
    models/<model-id>/card.yaml         models trained here, with their weights beside the card
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, WeightsNotInstalled
from ..progress import ProgressCallback
from .checkpoint import sha256_of
from .registry import ModelCard, WeightFile

INSTALLED, MISSING, MISMATCH, BUNDLED = "installed", "missing", "hash mismatch", "bundled"


def medseg_home() -> Path:
    env = os.environ.get("MEDSEG_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-medseg"))


def weights_dir(card: ModelCard) -> Path:
    if card.is_user_model and card.source is not None:
        return card.source.parent
    return medseg_home() / "weights" / card.id


def _record_path(card: ModelCard) -> Path:
    return weights_dir(card) / "installed.json"


def _records(card: ModelCard) -> dict:
    path = _record_path(card)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def _bundled_path(weight: WeightFile) -> Path | None:
    if not weight.bundled:
        return None
    import importlib.util

    spec = importlib.util.find_spec(weight.bundled["package"])  # locates without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / weight.bundled["path"]
        if path.is_file():
            return path
    return None


@dataclass
class WeightStatus:
    state: str  # installed, missing, hash mismatch, bundled
    path: Path | None
    detail: str = ""


def weight_status(card: ModelCard, verify: bool = False) -> WeightStatus:
    """Status of a card's main weights file. ``verify`` re-hashes the file (slow for large files)."""
    weight = card.weight
    path = weights_dir(card) / weight.file
    if not path.is_file():
        bundled = _bundled_path(weight)
        if bundled is not None:
            if verify and weight.sha256 and sha256_of(bundled) != weight.sha256:
                return WeightStatus(MISMATCH, bundled, "bundled file does not match its sha256")
            return WeightStatus(BUNDLED, bundled, f"shipped in {weight.bundled['package']}")
        return WeightStatus(MISSING, None, _install_hint(card))
    expected = weight.sha256 or _records(card).get(weight.file, {}).get("sha256")
    if expected and verify and sha256_of(path) != expected:
        return WeightStatus(MISMATCH, path, f"sha256 differs from {expected[:12]}...")
    if weight.size and path.stat().st_size != weight.size and weight.sha256:
        return WeightStatus(MISMATCH, path, f"size {path.stat().st_size} != {weight.size}")
    return WeightStatus(INSTALLED, path)


def _install_hint(card: ModelCard) -> str:
    weight = card.weight
    command = f"medseg models install {card.id} /path/to/{weight.file}"
    if not weight.published:
        code = f"; their code is at {weight.url}" if weight.url else ""
        return (f"The authors publish no trained weights for {card.name}{code}. Train them on your labels "
                f"(Fine-tune on my labels, or medseg train), or install a {weight.file} you have: {command}")
    if weight.source_note:  # a folder of several files: say which, installed under the card's file name
        return (f"Download {weight.source_note} from {weight.url}, then run: "
                f"medseg models install {card.id} /path/to/that/file")
    where = f"Download {weight.file} from {weight.url}" if weight.url else f"Obtain {weight.file}"
    return f"{where}, then run: {command}"


def weights_path(card: ModelCard) -> Path:
    """Path of an installed (or bundled) weights file; a clear error otherwise."""
    status = weight_status(card)
    if status.state in (INSTALLED, BUNDLED):
        return status.path
    raise WeightsNotInstalled(f"Weights for {card.name} are not installed. {_install_hint(card)}")


def install_from_file(card: ModelCard, source: str | Path, link: bool = False, force: bool = False) -> Path:
    """Import a file the user downloaded: verify it, then copy (or link) it into the weights folder."""
    source = Path(source).expanduser().resolve()
    if not source.is_file():
        raise CheckpointError(f"No such file: {source}")
    weight = card.weight
    digest = sha256_of(source)
    if weight.sha256 and digest != weight.sha256 and not force:
        raise CheckpointError(
            f"{source.name} does not match the published {weight.file} (sha256 {digest[:12]}... expected "
            f"{weight.sha256[:12]}...). Use --force to install it anyway."
        )
    _check_family(card, source)
    target_dir = weights_dir(card)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / weight.file
    if target.exists() or target.is_symlink():
        target.unlink()
    if link:
        target.symlink_to(source)
    else:
        with tempfile.NamedTemporaryFile(dir=target_dir, delete=False, suffix=".part") as tmp:
            tmp_path = Path(tmp.name)
        shutil.copyfile(source, tmp_path)
        os.replace(tmp_path, target)
    _write_record(card, weight.file, digest, str(source), linked=link)
    return target


def _check_family(card: ModelCard, path: Path) -> None:
    """Refuse a file of another family before it is installed under this model's name."""
    from .checkpoint import read_checkpoint
    from .families import family_module

    state = read_checkpoint(path)
    module = family_module(card.family)
    if card.weight.role == "backbone" and hasattr(module, "sniff_backbone"):
        if module.sniff_backbone(state):
            return
    if module.sniff(state) is None:
        raise CheckpointError(f"{path.name} is not a {card.family} checkpoint; it cannot be installed as {card.name}.")


def _write_record(card: ModelCard, file: str, digest: str, source: str, linked: bool) -> None:
    records = _records(card)
    records[file] = {"sha256": digest, "source": source, "linked": linked, "installed": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = _record_path(card)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(records, indent=2))
    os.replace(tmp, path)


def download(card: ModelCard, progress: ProgressCallback | None = None, timeout: float = 30.0) -> Path:
    """Download a card's weights from the official URL; a clear message when that is impossible."""
    import urllib.request

    weight = card.weight
    hint = _install_hint(card)
    if weight.manual_download or not weight.url:
        raise CheckpointError(f"{weight.file} cannot be downloaded automatically. {hint}")
    target_dir = weights_dir(card)
    target_dir.mkdir(parents=True, exist_ok=True)
    part = target_dir / (weight.file + ".part")
    try:
        with urllib.request.urlopen(weight.url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or weight.size or 0)
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total, f"Downloading {weight.file}")
    except OSError as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(f"Could not download {weight.url} ({reason}). {hint}") from None
    try:
        return install_from_file(card, part)
    finally:
        part.unlink(missing_ok=True)


def verify(card: ModelCard) -> WeightStatus:
    return weight_status(card, verify=True)
