"""Weights manager: where each model's files live, whether they are intact, and how to install them.

Layout under ``$MEDSEG_HOME`` (default: the user's cache folder)::

    weights/<model-id>/<official file name>
    weights/<model-id>/installed.json   sha256, size, source and time of each installed file
    models/<model-id>/card.yaml         models trained here, with their weights beside the card
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_json, fsync_dir, replacing, temp_path, write_fully
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
    """What ``installed.json`` says about each installed file; a damaged record is a one-line error."""
    path = _record_path(card)
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise CheckpointError(_damaged(card, path, reason)) from None
    if not isinstance(records, dict) or not all(isinstance(r, dict) for r in records.values()):
        raise CheckpointError(_damaged(card, path, "not a table of installed files"))
    for record in records.values():
        if not isinstance(record.get("sha256", ""), str) or not isinstance(record.get("size", 0), int):
            raise CheckpointError(_damaged(card, path, "a sha256 or size field has the wrong type"))
    return records


def _damaged(card: ModelCard, path: Path, reason: str) -> str:
    return (f"The install record {path} is damaged ({reason}); reinstall with: "
            f"medseg models install {card.id} /path/to/{card.weight.file}")


def bundled_path(weight: WeightFile) -> Path | None:
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
    """Status of a card's main weights file. ``verify`` re-hashes the file (slow for large files).

    An installed file is checked against its install record (the published sha256, or the one a
    ``--force`` install accepted), else against the card.
    """
    weight = card.weight
    path = weights_dir(card) / weight.file
    if not path.is_file():
        bundled = bundled_path(weight)
        if bundled is not None:
            if verify and weight.sha256 and sha256_of(bundled) != weight.sha256:
                return WeightStatus(MISMATCH, bundled, "bundled file does not match its sha256")
            return WeightStatus(BUNDLED, bundled, f"shipped in {weight.bundled['package']}")
        return WeightStatus(MISSING, None, _install_hint(card))
    record = _records(card).get(weight.file, {})
    expected = record.get("sha256") or weight.sha256
    size = record.get("size") or (weight.size if weight.sha256 == expected else None)
    if size and path.stat().st_size != size:
        return WeightStatus(MISMATCH, path, f"size {path.stat().st_size} != {size}")
    if expected and verify and sha256_of(path) != expected:
        return WeightStatus(MISMATCH, path, f"sha256 differs from {expected[:12]}...")
    forced = bool(weight.sha256 and expected != weight.sha256)
    return WeightStatus(INSTALLED, path, "installed with --force: not the published file" if forced else "")


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
    """Import a file the user downloaded: verify it, then copy (or link) it into the weights folder.

    The copy goes to a temporary file beside the target, hashed as it is written; only a copy whose
    sha256 is the published one (or any, with ``force``) and whose layout is exactly the card's family
    and architecture replaces the old file, in one rename. On any failure (a full disk included) the
    old weights stay as they were and no temporary file is left.
    """
    source = Path(source).expanduser().resolve()
    if not source.is_file():
        raise CheckpointError(f"No such file: {source}")
    weight = card.weight
    digest = sha256_of(source)
    _check_digest(card, source.name, digest, force)
    _check_family(card, source)
    target_dir = weights_dir(card)
    target = target_dir / weight.file
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        if link:
            with replacing_link(target) as temp:
                temp.symlink_to(source)
        else:
            def verify(copy: Path) -> None:
                if copied["sha256"] != digest:
                    raise CheckpointError(f"{source.name} changed while it was copied; install it again")
                _check_family(card, copy)

            copied = {}
            with replacing(target, verify=verify) as temp:
                copied["sha256"] = _copy_hashing(source, temp)
        _write_record(card, weight.file, digest, source.stat().st_size, str(source), linked=link, forced=force
                      and digest != weight.sha256 and weight.sha256 is not None)
    except OSError as exc:
        raise CheckpointError(f"Cannot install {card.id} into {target_dir}: {exc.strerror or exc}; "
                              "the previous weights (if any) are unchanged") from None
    return target


def _check_digest(card: ModelCard, name: str, digest: str, force: bool) -> None:
    weight = card.weight
    if weight.sha256 and digest != weight.sha256 and not force:
        raise CheckpointError(
            f"{name} does not match the published {weight.file} (sha256 {digest[:12]}... expected "
            f"{weight.sha256[:12]}...). Use --force to install it anyway."
        )


def _copy_hashing(source: Path, temp: Path) -> str:
    """Copy ``source`` to the new file ``temp`` (every byte written, else ENOSPC) and return the copy's sha256."""
    digest = hashlib.sha256()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(source, "rb") as stream:
            while block := stream.read(1 << 22):
                write_fully(fd, block)
                digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


@contextmanager
def replacing_link(target: Path):
    """A symbolic link made at a temporary name, then renamed over ``target``."""
    temp = temp_path(target)
    try:
        yield temp
        os.replace(temp, target)
        fsync_dir(target.parent)
    finally:
        if temp.is_symlink():
            temp.unlink()


def _expected_families(card: ModelCard) -> set[str]:
    """What ``sniff`` must say of a file for this card: its family exactly (MedSAM has SAM's layout; LVM-Med's
    fine-tuned ViT files hold a whole SAM)."""
    return {"medsam": {"sam"}, "lvm_med_vit": {"lvm_med_vit", "sam"}}.get(card.family, {card.family})


def _check_family(card: ModelCard, path: Path) -> None:
    """Refuse a file of another family or architecture before it is installed under this model's name."""
    from .checkpoint import read_checkpoint
    from .families import family_module

    state = read_checkpoint(path)
    module = family_module(card.family)
    if card.weight.role == "backbone" and hasattr(module, "sniff_backbone"):
        if module.sniff_backbone(state):
            return
    found = module.sniff(state)
    if found not in _expected_families(card):
        from .families import guess_family

        try:
            found = found or guess_family(state)
        except CheckpointError:
            found = None
        looks = f" (it holds a {found} network)" if found else ""
        raise CheckpointError(f"{path.name} is not a {card.family} checkpoint{looks}; "
                              f"it cannot be installed as {card.name}.")
    wanted = dict(card.architecture)
    if wanted and hasattr(module, "architecture"):
        have = module.architecture(state)
        wrong = {key: have.get(key) for key, value in wanted.items() if have.get(key) != value}
        if wrong:
            shown = ", ".join(f"{key} {value} (the card says {wanted[key]})" for key, value in wrong.items())
            raise CheckpointError(f"{path.name} has another architecture: {shown}; it cannot be installed as "
                                  f"{card.name}.")


def _write_record(card: ModelCard, file: str, digest: str, size: int, source: str, linked: bool,
                  forced: bool) -> None:
    try:
        records = _records(card)
    except CheckpointError:
        records = {}  # a damaged record is replaced by this install's
    records[file] = {"sha256": digest, "size": size, "source": source, "linked": linked, "forced": forced,
                     "installed": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(_record_path(card), records)


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
