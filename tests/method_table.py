"""The one table of adapter methods every test file draws from (as PEFT's test suite does).

A new method adds its configurations to CASES and its parameter count to PARAMETERS; every common check
(test_methods, test_fast_path, test_peft_equivalence) then runs on it, and test_registry fails while a
registered method has no row. Routing inputs are derived from the method's traits, never its name.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from skillmix import SkillMixConfig

# (id, config fields): every method appears, plus the variants that change the computation.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("lora", dict(method="lora", r=4, lora_alpha=8)),
    ("molora", dict(method="molora", r=2, num_experts=3)),
    ("molora_top1", dict(method="molora", r=2, num_experts=3, top_k=1, load_balancing_coef=0.1)),
    ("molora_sd", dict(method="molora_sd", r=4, num_experts=3)),
    ("mode", dict(method="mode", r=4, num_experts=3)),
    ("mode_p2", dict(method="mode", r=4, num_experts=3, expert_rank=2, load_balancing_coef=0.1)),
    ("poly", dict(method="poly", r=2, n_skills=3, n_tasks=3)),
    ("mhr", dict(method="mhr", r=2, n_skills=3, n_tasks=3, n_splits=4)),
    ("orchmoe", dict(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=2, router_dim=8)),
    ("orchmoe_polymix", dict(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=2, router_dim=8, mix="poly")),
    ("orchmoe_first_version", dict(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=2, router_dim=8,
                                   router_scoring="dot", allocation_init="poly")),
    ("orchmoe_no_task_router", dict(method="orchmoe", r=2, n_skills=3, task_router="uniform")),
    ("orchmoe_no_skill_router", dict(method="orchmoe", r=2, n_skills=3, router_dim=8, skill_router="uniform")),
]


def _skills(d_in: int, d_out: int, f: SkillMixConfig) -> int:
    return f.n_skills * f.r * (d_in + d_out)


# Trainable parameters per adapted layer (d_in, d_out), from METHODS.md §1.4, §2.6, §3.3, §4.3, written
# independently of the layers.
PARAMETERS: dict[str, Callable[[int, int, SkillMixConfig], int]] = {
    "lora": lambda d_in, d_out, f: f.r * (d_in + d_out),
    "molora": lambda d_in, d_out, f: f.num_experts * f.r * (d_in + d_out) + f.num_experts * d_in,
    "molora_sd": lambda d_in, d_out, f: f.r * d_in + f.num_experts * f.r * d_out + f.num_experts * d_in,
    "mode": lambda d_in, d_out, f: (f.r * d_in + f.num_experts * f.r * d_out
                                    + (f.r // f.expert_rank) * f.num_experts * d_in),
    "poly": lambda d_in, d_out, f: _skills(d_in, d_out, f) + f.n_tasks * f.n_splits * f.n_skills,
    "mhr": lambda d_in, d_out, f: _skills(d_in, d_out, f) + f.n_tasks * f.n_splits * f.n_skills,
    "orchmoe": lambda d_in, d_out, f: (_skills(d_in, d_out, f)
                                       + (f.n_abstract_tasks * f.n_skills if f.skill_router == "learned" else 0)),
}
# Model-level router parameters (d_model): OrchMoE's task router W_Q [d_k, d_model] and keys [N, d_k] (METHODS.md
# §1.4), plus the learnable temperature of cosine scoring; built only with a learned allocation.
MODEL_PARAMETERS: dict[str, Callable[[int, SkillMixConfig], int]] = {
    "orchmoe": lambda d_model, f: ((d_model + f.n_abstract_tasks) * f.router_dim + (f.router_scoring == "cosine")
                                   if f.task_router == "attention" and f.skill_router == "learned" else 0),
}


def methods_in_table() -> set[str]:
    return {fields["method"] for _, fields in CASES}


def params(*archs: str, only: Callable[[str, dict], bool] = lambda name, fields: True) -> list:
    """pytest params (arch, fields) with ids "<arch>-<case>" for every case `only` accepts."""
    return [pytest.param(arch, fields, id=f"{arch}-{name}") for arch in archs for name, fields in CASES
            if only(name, fields)]


def routing_inputs(config: SkillMixConfig, bsz: int = 3) -> dict[str, torch.Tensor]:
    """What forward needs besides the tokens: task ids for a method routed by task id."""
    return {"task_ids": torch.arange(bsz) % config.n_tasks} if config.layer_class.uses_task_ids else {}


def export_routing(config: SkillMixConfig) -> dict[str, Any] | None:
    """Arguments of export_lora for one fixed routing (None: the method cannot be collapsed into a LoRA)."""
    cls = config.layer_class
    if cls.routing == "token":
        return None
    if cls.uses_task_ids:
        return {"task_id": config.n_tasks - 1}
    if cls.uses_task_weights:
        weights = torch.linspace(1.0, 2.0, config.n_abstract_tasks)
        return {"task_weights": (weights / weights.sum()).tolist()}
    return {}


def forward_routing(config: SkillMixConfig, routing: dict[str, Any], bsz: int = 3) -> dict[str, torch.Tensor]:
    """The forward inputs that reproduce an `export_routing` choice for a batch of `bsz`."""
    if "task_id" in routing:
        return {"task_ids": torch.full((bsz,), routing["task_id"])}
    if "task_weights" in routing:
        return {"task_weights": torch.tensor([routing["task_weights"]] * bsz)}
    return {}
