"""Label names (and, for PNG/TIFF, geometry) kept next to label files or in their headers.

- JSON sidecar `<file name>.json` (`formats.sidecar_path`, one per label file): {"format": "napari-medseg
  labels", "label_names": {"1": "liver"}, "label_colors": {"1": [221, 130, 101]}, "label_classes": {"1":
  "organ"}, "geometry": Image.geometry()} (colours and classes when given); other JSON files (e.g. BIDS
  sidecars) are ignored. Sidecars named the old way (`<stem>.json`) are read while no other image
  file in the folder could own them, and replaced by the new name when the file is written again.
- NRRD/MetaImage header keys in 3D Slicer's segmentation style: Segment{i}_Name, _LabelValue, _ID, _Layer,
  _Color (0-1 RGB, when given) and _Tags, where an object's class is our tag `MedsegClass:<class>` (URL-quoted:
  Slicer's tags are `key:value|key:value|`).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, unquote

from napari_medseg.atomic import replacing, write_new  # unique temp, fsync, umask permissions

from .formats import legacy_sidecar_path, shares_legacy_sidecar, sidecar_path

SIDECAR_FORMAT = "napari-medseg labels"
_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(Name|LabelValue)$")
_TAGS_KEY = re.compile(r"^Segment(\d+)_(Tags|LabelValue)$")
CLASS_TAG = "MedsegClass"


def read_sidecar(path: Path) -> dict:
    """Our sidecar's content for `path`, or {} when there is none (or it is someone else's)."""
    content = _ours(sidecar_path(path))
    if content is None and not sidecar_path(path).exists() and not shares_legacy_sidecar(path):
        content = _ours(legacy_sidecar_path(path))
    if content is None:
        return {}
    content["label_names"] = {int(k): str(v) for k, v in content.get("label_names", {}).items()}
    content["label_colors"] = {int(k): tuple(int(c) for c in v) for k, v in content.get("label_colors", {}).items()}
    content["label_classes"] = {int(k): str(v) for k, v in content.get("label_classes", {}).items()}
    return content


def _ours(target: Path) -> dict | None:
    try:
        content = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != SIDECAR_FORMAT:
        return None
    return content


@contextmanager
def sidecar_replaced_with(path: Path, label_names: dict[int, str] | None, geometry: dict | None,
                          label_colors: dict[int, tuple] | None = None,
                          label_classes: dict[int, str] | None = None) -> Iterator[None]:
    """``with sidecar_replaced_with(labels_path, names, geometry): write the labels``: the sidecar is
    written before the block (a full disk fails before the labels change) and replaces the old one
    only after the block succeeded; without names, colours (0-255 RGB), classes or geometry a stale
    sidecar of ours is removed then. An old-style sidecar of this file is retired."""
    target = sidecar_path(path)
    if label_names or label_colors or label_classes or geometry is not None:
        content = {"format": SIDECAR_FORMAT, "label_names": {str(k): v for k, v in (label_names or {}).items()}}
        if label_colors:
            content["label_colors"] = {str(k): [int(c) for c in v] for k, v in label_colors.items()}
        if label_classes:
            content["label_classes"] = {str(k): v for k, v in label_classes.items()}
        if geometry is not None:
            content["geometry"] = geometry
        with replacing(target) as temp:
            write_new(temp, json.dumps(content, indent=1).encode("utf-8"))
            yield
    else:
        yield
        if _ours(target) is not None:
            target.unlink()
    remove_legacy_sidecar(path)


def remove_legacy_sidecar(path: Path) -> None:
    """Delete the old-style sidecar of `path` if it is ours and no other file in the folder could own it."""
    legacy = legacy_sidecar_path(path)
    if legacy != sidecar_path(path) and not shares_legacy_sidecar(path) and _ours(legacy) is not None:
        legacy.unlink(missing_ok=True)


def names_from_header(fields: dict[str, str]) -> dict[int, str]:
    """Label names from Slicer-style Segment{i}_Name / Segment{i}_LabelValue header keys."""
    names, values = {}, {}
    for key, value in fields.items():
        match = _SEGMENT_KEY.match(key)
        if match:
            (names if match[2] == "Name" else values)[int(match[1])] = value.strip()
    found = {}
    for index, name in names.items():
        try:
            found[int(values.get(index, index + 1))] = name
        except ValueError:
            continue
    return found


def names_to_header(label_names: dict[int, str], label_colors: dict[int, tuple] | None = None,
                    label_classes: dict[int, str] | None = None) -> dict[str, str]:
    """Slicer segment keys for every non-zero label named, coloured (0-255 RGB) or classed (0 is the
    background, not a segment)."""
    colors, classes = label_colors or {}, label_classes or {}
    fields = {}
    for index, value in enumerate(sorted({*label_names, *colors, *classes} - {0})):
        prefix = f"Segment{index}_"
        fields.update({prefix + "ID": f"Segment_{value}", prefix + "Name": label_names.get(value, f"Segment_{value}"),
                       prefix + "LabelValue": str(value), prefix + "Layer": "0"})
        if value in colors:
            fields[prefix + "Color"] = " ".join(f"{c / 255:.6g}" for c in colors[value])
        if classes.get(value):
            fields[prefix + "Tags"] = class_tag(classes[value])
    return fields


def class_tag(object_class: str) -> str:
    """An object's class as one of Slicer's segment tags (``key:value|``)."""
    return f"{CLASS_TAG}:{quote(object_class, safe=' ')}|"


def classes_from_header(fields: dict[str, str]) -> dict[int, str]:
    """Object classes from our tag in Slicer-style Segment{i}_Tags / Segment{i}_LabelValue header keys."""
    tags, values = {}, {}
    for key, value in fields.items():
        match = _TAGS_KEY.match(key)
        if match:
            (tags if match[2] == "Tags" else values)[int(match[1])] = value
    found = {}
    for index, text in tags.items():
        for tag in text.split("|"):
            key, _, value = tag.partition(":")
            if key == CLASS_TAG and value:
                try:
                    found[int(values.get(index, index + 1))] = unquote(value)
                except ValueError:
                    continue
    return found
