"""The objects of a labels layer (value, name, class, colour), kept in the layer's metadata (no Qt, no napari).

The table lives in ``metadata["medseg"]["objects"]``; ``metadata["medseg"]["label_names"]`` mirrors the names
of the objects present, so that napari-medseg's writer saves them with the labels.
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
        """Read the stored table; layers from elsewhere have only ``label_names`` (a model's classes)."""
        records = info.get("objects") or [{"value": k, "name": v, "category": v}
                                          for k, v in (info.get("label_names") or {}).items() if int(k) != 0]
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

    def store(self, info: dict) -> None:
        """Write the table and the names to save into a layer's medseg metadata."""
        info["objects"] = [asdict(o) for _, o in sorted(self.objects.items())]
        info["label_names"] = self.label_names()
