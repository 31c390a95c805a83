"""Model registry, weights manager and checkpoint loading (torch is imported lazily)."""
from .families import FAMILY_MODULES, guess_family, load_checkpoint
from .loaded import LoadedModel

__all__ = ["FAMILY_MODULES", "LoadedModel", "guess_family", "load_checkpoint"]
