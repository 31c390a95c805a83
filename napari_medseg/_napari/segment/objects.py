"""The objects of a labels layer (value, name, class, colour), kept in the layer's metadata (no Qt, no napari).

The table lives in ``metadata["medseg"]["objects"]``; ``label_names``, ``label_classes`` and ``label_colors``
(0-255 RGB, the colours shown) there mirror the objects present, so that napari-medseg's writer saves them with
the labels, and a labels file read back (or a recovery copy, a project's labels) gives the same objects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

RGBA = tuple[float, float, float, float]


@dataclass
class LabelObject:
    value: int
    name: str
    category: str = ""  # the object's class ("liver", "lesion"); free text or one of the model's classes
    color: RGBA | None = None  # None: the layer colormap's own colour for the value

    @classmethod
    def from_dict(cls, record: dict) -> "LabelObject":
        color = record.get("color")
        return cls(int(record["value"]), str(record.get("name") or f"object {record['value']}"),
                   str(record.get("category") or ""), tuple(float(c) for c in color) if color else None)


@dataclass
class ObjectTable:
    """Every object a labels layer has held, by label value; ``present`` are those in the data now."""
    objects: dict[int, LabelObject] = field(default_factory=dict)
    present: list[int] = field(default_factory=list)

    @classmethod
    def from_metadata(cls, info: dict) -> "ObjectTable":
        """Read the stored table; layers from a file have its names, classes and colours, a model's layers
        only ``label_names`` (its classes, which are also the objects' classes)."""
        records = info.get("objects") or _records(info)
        return cls({int(r["value"]): LabelObject.from_dict(r) for r in records})

    def sync(self, values: Iterable[int]) -> list[int]:
        """Follow the data: every non-zero value present gets an object (``object N`` until renamed)."""
        self.present = sorted(int(v) for v in values if int(v) != 0)
        for value in self.present:
            self.objects.setdefault(value, LabelObject(value, f"object {value}"))
        return self.present

    def shown(self) -> list[LabelObject]:
        return [self.objects[v] for v in self.present]

    def rename(self, value: int, name: str) -> None:
        name = name.strip()
        if not name:
            raise ValueError("An object's name cannot be empty")
        self.objects[value].name = name

    def set_category(self, value: int, category: str) -> None:
        self.objects[value].category = category.strip()

    def set_color(self, value: int, color: RGBA | None) -> None:
        self.objects[value].color = None if color is None else tuple(float(c) for c in color)

    def custom_colors(self) -> dict[int, RGBA]:
        return {v: o.color for v, o in self.objects.items() if o.color is not None}

    def label_names(self) -> dict[int, str]:
        """Names of the objects present, for the labels file's header or sidecar."""
        return {v: self.objects[v].name for v in self.present}

    def store(self, info: dict, shown_colors: dict[int, RGBA] | None = None) -> None:
        """Write the table and the names, classes and (given the colours shown now) colours to save into a
        layer's medseg metadata."""
        info["objects"] = [asdict(o) for _, o in sorted(self.objects.items())]
        info["label_names"] = self.label_names()
        info["label_classes"] = {v: self.objects[v].category for v in self.present if self.objects[v].category}
        if shown_colors is not None:
            info["label_colors"] = {v: tuple(int(round(float(c) * 255)) for c in shown_colors[v][:3])
                                    for v in self.present if v in shown_colors}


def _records(info: dict) -> list[dict]:
    """Object records from the names, classes and 0-255 colours a labels file (or a model) gave a layer.
    Names alone are a model's classes (each object's class is its name); a file that also has colours or
    classes holds objects, and those it gives no class have none (files keep only the classes set)."""
    names = {int(k): v for k, v in (info.get("label_names") or {}).items()}
    classes = {int(k): v for k, v in (info.get("label_classes") or {}).items()}
    colors = {int(k): v for k, v in (info.get("label_colors") or {}).items()}
    names_are_classes = not classes and not colors
    records = []
    for value in sorted({*names, *classes, *colors} - {0}):
        name = names.get(value) or f"object {value}"
        color = colors.get(value)
        records.append({"value": value, "name": name, "category": name if names_are_classes else classes.get(value, ""),
                        "color": None if color is None else (*(float(c) / 255 for c in color[:3]), 1.0)})
    return records
