"""`LoadedModel`: a network plus everything inference needs to use it correctly."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("box2d", "auto2d", "text2d", "auto3d")


@dataclass
class LoadedModel:
    network: Any  # torch.nn.Module in eval mode, called exactly like the official network
    family: str
    task: str  # one of TASKS
    classes: dict[int, str] = field(default_factory=dict)  # label value -> name, background included
    preprocessing: dict = field(default_factory=dict)  # family-specific: normalization, patch size, spacing...
    path: Path | None = None
    sha256: str | None = None
    info: dict = field(default_factory=dict)  # provenance, generation, notes reported once

    def to(self, device) -> "LoadedModel":
        self.network.to(device)
        return self
