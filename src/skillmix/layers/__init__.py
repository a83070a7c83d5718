"""Adapter layers, one file per method, and the registry that maps a method name to its layer."""
from ..config import METHODS
from .base import AdapterLayer
from .lora import LoRALayer
from .mode import MoDELayer
from .molora import MoLoRALayer
from .molora_sd import MoLoRASDLayer
from .orchmoe import OrchMoELayer
from .poly import PolyLayer

LAYERS: dict[str, type[AdapterLayer]] = {
    "lora": LoRALayer,
    "molora": MoLoRALayer,
    "molora_sd": MoLoRASDLayer,
    "mode": MoDELayer,
    "poly": PolyLayer,
    "mhr": PolyLayer,
    "orchmoe": OrchMoELayer,
}
assert set(LAYERS) == set(METHODS), "every method in config.METHODS needs a layer"

__all__ = ["AdapterLayer", "LAYERS"]
