"""SkillMixConfig: one dataclass for every method, with defaults and validation."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import SkillMixError
from .layers import layer_class

# Default adapted modules per `model_type` (the same defaults as PEFT's LoRA).
DEFAULT_TARGET_MODULES = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "t5": ["q", "v"],
    "mt5": ["q", "v"],
    "gpt2": ["c_attn"],
}

# Fields whose default changed, with the value that files written before the field existed meant.
FIRST_VERSION = {"router_scoring": "dot", "allocation_init": "poly"}

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass
class SkillMixConfig:
    """Hyper-parameters of one adapter; every field but `method` has a default.

    Field names follow PEFT where PEFT has the concept (`r`, `lora_alpha`, `lora_dropout`,
    `target_modules`, `init_weights`, `n_tasks`, `n_skills`, `n_splits`). What depends on the method
    (defaults, scaling, cross-field checks, its routers) is asked of the method's layer class.
    """

    method: str = "lora"
    target_modules: list[str] | str | None = None  # names (suffix match) or one regex; None: per model type
    r: int = 8  # rank of LoRA, of each MoLoRA expert, of each skill; rank positions of the shared A (molora_sd, mode)
    lora_alpha: float | None = None  # scaling = lora_alpha / r; None: the method's default (1; poly/mhr: 1/r)
    lora_dropout: float = 0.0
    init_weights: bool = True  # True: up-projections start at 0, so the adapted model equals the base
    # token-routed methods
    num_experts: int = 4  # MoLoRA/MoLoRA-SD experts, MoDE experts per rank group (m)
    expert_rank: int = 1  # MoDE p: rank of one dyadic expert (p = r makes MoDE equal MoLoRA-SD)
    top_k: int | None = None  # keep the k largest router probabilities (not renormalised); None: soft
    load_balancing_coef: float = 0.0  # Switch-style auxiliary loss weight (token routers and task router)
    # skill methods
    n_skills: int = 4  # S
    n_tasks: int = 1  # rows of Poly/MHR's allocation table
    n_splits: int | None = None  # MHR heads; None: 1 for poly, 4 for mhr
    gumbel_temperature: float = 1.0
    # OrchMoE
    n_abstract_tasks: int = 4  # N
    router_dim: int = 64  # d_k of the task router's keys
    mix: str = "output"  # "output": sum of skill outputs; "poly": mix A and B like Poly
    task_router: str = "attention"  # "attention" | "uniform" (ablation: w = 1/N)
    router_scoring: str = "cosine"  # "cosine": standardised feature, cosine x learnable scale; "dot": first version
    skill_router: str = "learned"  # "learned" | "uniform" (ablation: fixed uniform allocation)
    allocation_init: str = "normal"  # Theta ~ N(0, 1): rows differ; "poly": U(-1e-3, 1e-3) (PEFT Poly, first version)
    # bookkeeping
    base_model_name_or_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata (e.g. task names)

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        self.layer_class.prepare_config(self)
        self.validate()

    @property
    def layer_class(self):
        """The adapter layer class registered for `method` (`skillmix.layers.LAYERS`)."""
        return layer_class(self.method)

    @property
    def scaling(self) -> float:
        """Multiplier of every adapter output."""
        if self.lora_alpha is None:
            return self.layer_class.default_scaling(self)
        return self.lora_alpha / self.r

    @property
    def uses_task_ids(self) -> bool:
        """True when forward/generate need `task_ids` (the method routes by the true task)."""
        return self.layer_class.uses_task_ids

    def validate(self) -> None:
        """Raise SkillMixError naming the first invalid field."""
        def bad(name: str, expected: str) -> None:
            raise SkillMixError(f"SkillMixConfig.{name}={getattr(self, name)!r}: expected {expected}")

        layer_class = self.layer_class  # an unknown method is an error naming the known ones
        for name in ("r", "num_experts", "expert_rank", "n_skills", "n_tasks", "n_splits",
                     "n_abstract_tasks", "router_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "a positive integer")
        if not 0.0 <= self.lora_dropout < 1.0:
            bad("lora_dropout", "a float in [0, 1)")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            bad("lora_alpha", "a positive number or None")
        if self.top_k is not None and not (isinstance(self.top_k, int) and 1 <= self.top_k <= self.num_experts):
            bad("top_k", f"None or an integer in [1, num_experts={self.num_experts}]")
        if self.load_balancing_coef < 0:
            bad("load_balancing_coef", "a non-negative float")
        if not self.gumbel_temperature > 0:
            bad("gumbel_temperature", "a positive float")
        if self.mix not in ("output", "poly"):
            bad("mix", "'output' or 'poly'")
        if self.task_router not in ("attention", "uniform"):
            bad("task_router", "'attention' or 'uniform'")
        if self.skill_router not in ("learned", "uniform"):
            bad("skill_router", "'learned' or 'uniform'")
        if self.router_scoring not in ("cosine", "dot"):
            bad("router_scoring", "'cosine' or 'dot'")
        if self.allocation_init not in ("normal", "poly"):
            bad("allocation_init", "'normal' or 'poly'")
        tm = self.target_modules
        if tm is not None and not (isinstance(tm, str) or (isinstance(tm, list) and tm and all(isinstance(t, str) for t in tm))):
            bad("target_modules", "a regex string, a non-empty list of module names, or None")
        problem = layer_class.check_config(self)
        if problem is not None:
            bad(*problem)

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"peft_type": "SKILLMIX", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "SkillMixConfig":
        data = {**FIRST_VERSION, **data}  # a file written before a field existed meant its first version
        data.pop("peft_type", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SkillMixError(f"{source}: unknown field(s) {', '.join(unknown)}; expected fields of SkillMixConfig")
        return cls(**data)

    def save(self, directory: str | os.PathLike) -> None:
        from .io import atomic_write_text

        atomic_write_text(os.path.join(directory, CONFIG_NAME), json.dumps(self.to_dict(), indent=2) + "\n")
