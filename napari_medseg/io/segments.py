"""The segments of a label map: value, name and colour of each object, for the formats that store them.

Names come from the caller (a model's classes, a layer's label names); colours from the caller, else from
the TotalSegmentator class table when the name is one of its classes, else from a fixed palette, so that
the same label gets the same colour in every file; an object's class (the user's "liver", "lesion") from the
caller. Only values that occur in the labels are segments.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import ImageWriteError

RGB = tuple[int, int, int]
Code = tuple[str, str, str]  # coding scheme, code value, code meaning

# Names of the TotalSegmentator class table carry its SNOMED-CT codes (category, type, laterality modifier,
# anatomic region; resources/classes/totalsegmentator_v2.json says where they come from); any other name is
# SNOMED-CT "Tissue" (category) of type "Tissue", with the object's name as its label.
TISSUE: Code = ("SCT", "85756007", "Tissue")


@dataclass(frozen=True)
class Segment:
    value: int  # the voxel value in our label maps
    name: str
    color: RGB  # 0-255
    group: str | None = None  # the class table's group ("organs", "vertebrae", ...) when known
    codes: dict[str, Code] | None = None  # the class table's terminology codes when the name is one of its classes
    object_class: str = ""  # the class the user gave the object ("" when none)

    @property
    def category(self) -> Code:
        return self.codes["category"] if self.codes else TISSUE

    @property
    def property_type(self) -> Code:
        return self.codes["type"] if self.codes else TISSUE

    def code(self, field: str) -> Code | None:
        """The class table's "modifier", "region" or "region_modifier" code, None when it has none."""
        return (self.codes or {}).get(field)


def present_values(labels: np.ndarray) -> list[int]:
    """Non-zero values that occur in `labels` (unsigned integers), ascending."""
    if labels.dtype.itemsize <= 2:
        counts = np.bincount(labels.ravel(), minlength=1)
        return [int(v) for v in np.flatnonzero(counts[1:]) + 1]
    return [int(v) for v in np.unique(labels) if v]


@lru_cache(maxsize=1)
def _known_classes() -> dict[str, tuple[RGB, str | None, dict[str, Code] | None]]:
    from ..models.registry import class_table

    table = class_table("totalsegmentator_v2")
    return {name: (tuple(table["colors"][value]), table["groups"][value], table["codes"].get(value))
            for value, name in table["names"].items() if value and table["colors"].get(value)}


def palette_color(value: int) -> RGB:
    """A fixed, well-spread colour for labels the caller and the class table do not colour."""
    hue = (value * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def checked_color(value, label: int) -> RGB:
    rgb = tuple(value)[:3] if value is not None else ()
    if len(rgb) != 3:
        raise ImageWriteError(f"Colour of label {label} must be three numbers (R, G, B), got {value!r}")
    if all(isinstance(c, float) for c in rgb) and all(0 <= c <= 1 for c in rgb):
        rgb = tuple(c * 255 for c in rgb)  # napari's colours are 0-1 floats
    if not all(0 <= c <= 255 for c in rgb):
        raise ImageWriteError(f"Colour of label {label} must be 0-255 per channel, got {value!r}")
    return tuple(int(round(c)) for c in rgb)


def segments_of(labels: np.ndarray, names: dict[int, str] | None = None,
                colors: dict[int, tuple] | None = None, *, classes: dict[int, str] | None = None,
                given_only: bool = False) -> list[Segment]:
    """One `Segment` per non-zero value present in `labels`, or (`given_only`) per value named, coloured or
    classed, present or not (a label table, like the headers and sidecars, keeps every name it is given)."""
    names, colors, classes, known = names or {}, colors or {}, classes or {}, _known_classes()
    if given_only:
        values = sorted({int(v) for v in (*names, *colors, *classes) if int(v) > 0})
    else:
        values = present_values(labels)
    segments = []
    for value in values:
        name = str(names.get(value) or f"Segment_{value}")
        table_color, group, codes = known.get(name, (None, None, None))
        if value in colors:
            color = checked_color(colors[value], value)
        else:
            color = table_color or palette_color(value)
        segments.append(Segment(value, name, color, group, codes, str(classes.get(value) or "")))
    return segments
