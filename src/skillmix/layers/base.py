"""The shared base of every adapter layer: wrapping a linear layer, dropout, scaling, dtype, merge."""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..config import SkillMixConfig
from ..routing import RoutingContext

try:  # GPT-2 style layers store the weight as [d_in, d_out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()


def linear_shape(layer: nn.Module) -> tuple[int, int, bool]:
    """(d_in, d_out, weight_is_transposed) of an nn.Linear or a transformers Conv1D."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features, False
    if Conv1D and isinstance(layer, Conv1D):
        d_in, d_out = layer.weight.shape
        return d_in, d_out, True
    raise TypeError(f"cannot adapt {type(layer).__name__}: expected nn.Linear or transformers Conv1D")


def init_uniform_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Kaiming-uniform with a=sqrt(5) (nn.Linear's default, PEFT's LoRA A): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(tensor, -bound, bound)


class AdapterLayer(nn.Module):
    """Wraps a frozen linear layer: y = base(x) + delta(x). Subclasses add parameters and `delta`."""

    routing: ClassVar[str] = "none"  # "none" | "token" | "sequence"

    def __init__(self, base_layer: nn.Module, config: SkillMixConfig, context: RoutingContext, name: str):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features, self.weight_transposed = linear_shape(base_layer)
        self.r = config.r
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.context = context  # shared, not a submodule
        self.name = name
        self.disabled = False
        self.reset_parameters(config)
        weight = base_layer.weight
        # Adapter weights stay float32 when the base is half precision (as PEFT does).
        dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
        for p in self._adapter_parameters():
            p.data = p.data.to(device=weight.device, dtype=dtype)

    def reset_parameters(self, config: SkillMixConfig) -> None:
        """Create and initialise the adapter's parameters."""
        raise NotImplementedError

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution for input x [B, T, d_in] -> [B, T, d_out]."""
        raise NotImplementedError

    def lora_factors(self, **routing) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [R, d_in], B [d_out, R]) with B A = the layer's weight update for fixed routing; scaling in B."""
        raise NotImplementedError(f"{type(self).__name__} routes per token and cannot be collapsed into one LoRA")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return result
        dtype = next(self._adapter_parameters()).dtype
        squeeze = x.dim() == 2
        h = x.unsqueeze(1) if squeeze else x  # adapters see [B, T, d_in]
        delta = self.delta(h.to(dtype))
        return result + (delta.squeeze(1) if squeeze else delta).to(result.dtype)

    def _adapter_parameters(self):
        return (p for n, p in self.named_parameters() if not n.startswith("base_layer."))

    @torch.no_grad()
    def merge_into_base(self, **routing) -> nn.Module:
        """Add B A to the base weight and return the base layer (used by merge_and_unload)."""
        a, b = self.lora_factors(**routing)
        update = (b @ a).to(self.base_layer.weight.dtype)  # [d_out, d_in]
        self.base_layer.weight += update.T if self.weight_transposed else update
        return self.base_layer

    def extra_repr(self) -> str:
        return f"{self.name}: d_in={self.in_features}, d_out={self.out_features}, r={self.r}"
