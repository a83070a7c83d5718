"""Adapter layers, one file per method, and the registry that maps a method name to its layer class.

`LAYERS` is the only registry: a new method is one file here and one line below.
"""
from ..errors import SkillMixError
from .base import AdapterLayer
from .lora import LoRALayer
from .mhr import MHRLayer
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
    "mhr": MHRLayer,
    "orchmoe": OrchMoELayer,
}
METHODS = tuple(LAYERS)  # the built-in methods, in the order tables list them


def layer_class(method: str) -> type[AdapterLayer]:
    """The layer class registered for `method` (a SkillMixError naming the known methods otherwise)."""
    try:
        return LAYERS[method]
    except (KeyError, TypeError):
        raise SkillMixError(f"SkillMixConfig.method={method!r}: expected one of {', '.join(LAYERS)}") from None


__all__ = ["AdapterLayer", "LAYERS", "METHODS", "layer_class"]
