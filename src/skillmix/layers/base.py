"""The shared base of every adapter layer: wrapping a linear layer, dropout, scaling, dtype, merge."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from torch.nn.modules.module import _global_forward_hooks

from ..errors import SkillMixError
from ..routing import RoutingContext, load_balancing_loss

if TYPE_CHECKING:  # the config imports the layer registry, not the other way round
    from ..config import SkillMixConfig

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
    """Wraps a frozen linear layer: y = base(x) + delta(x). Subclasses add parameters and `delta`.

    The class is the one place a method's traits live; the model, training, analysis, adaptation and
    comparison code ask the class (via `skillmix.layers.LAYERS[method]`), never the method's name.
    """

    # How the layer routes: "none" (one update for every input), "token" (a router per layer and token:
    # cannot be collapsed into one LoRA) or "sequence" (one mixture per sequence: exportable per task).
    routing: ClassVar[str] = "none"
    uses_task_ids: ClassVar[bool] = False  # routed by the true task id (a RoutingContext.task_ids [B])
    uses_task_weights: ClassVar[bool] = False  # routed by model-level task weights [B, N] (a task router)
    routing_parameters: ClassVar[tuple[str, ...]] = ()  # parameter names that route rather than transform
    per_task_parameters: ClassVar[tuple[str, ...]] = ()  # parameters with one row per task id (new tasks grow them)
    saves_as_peft_lora: ClassVar[bool] = False  # save_pretrained writes a plain PEFT LoRA adapter
    router_dims: ClassVar[int] = 1  # token-routed layers: trailing dims of the router's probabilities
    use_fast_path: bool = True  # per instance: False runs the plain reference computation (`delta`)

    # ---- method traits that depend on the config -------------------------------------------------
    @classmethod
    def prepare_config(cls, config: SkillMixConfig) -> None:
        """Fill method-dependent defaults of `config` in place (called before validation)."""
        if config.n_splits is None:
            config.n_splits = 1

    @classmethod
    def check_config(cls, config: SkillMixConfig) -> tuple[str, str] | None:
        """A method-specific problem with `config` as (field, what was expected), or None."""
        return None

    @classmethod
    def default_scaling(cls, config: SkillMixConfig) -> float:
        """Multiplier of the adapter output when `lora_alpha` is None (else lora_alpha / r)."""
        return 1.0

    @classmethod
    def build_model_router(cls, config: SkillMixConfig, d_model: int) -> nn.Module | None:
        """A model-level router the method needs beside its layers (OrchMoE's task router), or None."""
        return None

    @classmethod
    def export_routing(cls, config: SkillMixConfig, task_id=None, task_weights=None) -> dict:
        """The fixed routing `lora_factors(**routing)` needs to collapse the layer into one LoRA; a
        SkillMixError when the method cannot be collapsed or the routing given does not fit it."""
        if cls.routing == "token":
            raise SkillMixError(f"method {config.method!r} routes per token; export_lora needs a method that routes "
                                "per sequence or not at all")
        return {}

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

    def record_token_routing(self, probs: torch.Tensor, lead: torch.Size) -> None:
        """Keep a token router's probabilities ([*lead, ...] or flattened [N, ...]) for `last_routing()` as
        [B, T, ...], and add their load-balancing loss while training (`balance_coef` > 0)."""
        batch_time = tuple(lead) if len(lead) == 2 else (lead[0], 1)
        self.context.record[self.name] = probs.detach().reshape(*batch_time, *probs.shape[probs.dim() - self.router_dims:])
        if self.balance_coef > 0 and self.training:
            self.context.aux_losses.append(self.balance_coef * load_balancing_loss(probs))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution for input x [B, T, d_in] -> [B, T, d_out]."""
        raise NotImplementedError

    def lora_factors(self, **routing) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [R, d_in], B [d_out, R]) with B A = the layer's weight update for fixed routing; scaling in B."""
        raise NotImplementedError(f"{type(self).__name__} routes per token and cannot be collapsed into one LoRA")

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disabled:
            return self.base_layer(x, *args, **kwargs)
        if not args and not kwargs and self.use_fast_path and self._fast_path_ok(x):
            return self.fused_forward(x)
        result = self.base_layer(x, *args, **kwargs)
        dtype = self.lora_A.dtype
        squeeze = x.dim() == 2
        h = x.unsqueeze(1) if squeeze else x  # adapters see [B, T, d_in]
        delta = self.delta(h.to(dtype))
        return result + (delta.squeeze(1) if squeeze else delta).to(result.dtype)

    # ---- fast path -------------------------------------------------------------------------------
    # The reference computation above materialises delta [B, T, d_out], scales it and adds it to the
    # base output: three passes over a [B*T, d_out] tensor (and their gradients) per adapted layer.
    # The fast path computes the same sum with the last (up-)projection accumulated straight into the
    # base output (BLAS beta=1: addmm/baddbmm), the scaling folded into that matmul's alpha, and token
    # routers fused with the shared down-projection into one matmul over x.

    def _fast_path_ok(self, x: torch.Tensor) -> bool:
        """Same dtype as the adapter, a contiguous [..., d_in] input, a plain linear base layer, no autocast
        (under autocast the base output's dtype differs from the adapter's, so nothing can accumulate into it),
        no hooks on the base layer (a forward hook may keep the base output, which is then updated in place)."""
        base = self.base_layer
        return (x.dim() in (2, 3) and x.dtype == self.lora_A.dtype and x.is_contiguous()
                and not torch.is_autocast_enabled(x.device.type)
                and isinstance(base, (nn.Linear, Conv1D) if Conv1D else nn.Linear)
                and not base._forward_hooks and not base._forward_pre_hooks and not _global_forward_hooks)

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) + delta(x) for an input accepted by `_fast_path_ok`; subclasses override it."""
        result = self.base_layer(x)
        squeeze = x.dim() == 2
        delta = self.delta(x.unsqueeze(1) if squeeze else x)
        return result + (delta.squeeze(1) if squeeze else delta)

    def base_flat(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x as [N, d_in], base output [N, d_out]) for a contiguous x [..., d_in]."""
        x2 = x.view(-1, self.in_features)
        return x2, self.base_layer(x2)

    @staticmethod
    def accumulate_(result: torch.Tensor, h: torch.Tensor, up_t: torch.Tensor, alpha: float) -> torch.Tensor:
        """result + alpha * h @ up_t, written into `result` when that is safe for autograd.

        2-D: h [N, R], up_t [R, d_out]; 3-D (per-example factors): h [B, T, R], up_t [B, R, d_out].
        In place only on a fresh base output (not a view, not a leaf that requires grad): the backward of
        a linear layer needs its inputs, not its output, so overwriting the output is safe.
        """
        inplace = not result._is_view() and not (result.requires_grad and result.is_leaf)
        if result.dim() == 2:
            return result.addmm_(h, up_t, alpha=alpha) if inplace else torch.addmm(result, h, up_t, alpha=alpha)
        return result.baddbmm_(h, up_t, alpha=alpha) if inplace else torch.baddbmm(result, h, up_t, alpha=alpha)

    def derived(self, tag: str, compute, *params: torch.Tensor):
        """compute() of weights derived from `params` (a concatenation, a permuted copy).

        With autograd off (eval, generation) the result is kept in the routing context and reused
        until one of `params` changes (identity or version) or the next SkillMixModel call resets it.
        """
        key = tuple(v for p in params for v in (p, p._version))
        return self.context.cached(f"{self.name}.{tag}", key, compute)

    # ---- routing hooks the model calls (no-ops for methods without them) ---------------------------
    def set_gumbel_temperature(self, temperature: float) -> None:
        """Set the temperature of a Gumbel-sigmoid skill router (nothing to do for other layers)."""

    def eval_allocation(self) -> torch.Tensor | None:
        """The eval-mode allocation of a skill router (sigmoid of its logits), or None."""
        return None

    def dropout_is_identity(self) -> bool:
        return isinstance(self.dropout, nn.Identity) or not self.training

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
