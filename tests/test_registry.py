"""The registry: every registered method has a row in the method table, and a new method is one file plus one
registry line (proved with a throwaway method defined here, run through the common checks)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import test_fast_path
import test_methods
import test_peft_equivalence
from method_table import CASES, PARAMETERS, methods_in_table
from skillmix import LAYERS, SkillMixConfig, SkillMixError
from skillmix.layers import AdapterLayer
from skillmix.layers.base import init_uniform_

SRC = Path(__file__).resolve().parents[1] / "src" / "skillmix"


def test_every_registered_method_has_a_row():
    assert set(LAYERS) == methods_in_table(), "add the method's configurations to method_table.CASES"
    assert set(LAYERS) == set(PARAMETERS), "add the method's parameter count to method_table.PARAMETERS"


def test_unknown_method_names_the_registry():
    with pytest.raises(SkillMixError, match="SkillMixConfig.method='gated_lora': expected one of lora, molora"):
        SkillMixConfig(method="gated_lora")


def test_no_method_name_comparisons_outside_the_registry():
    """What a method is lives on its layer class; the rest of the package asks the class."""
    names = "|".join(LAYERS)
    pattern = rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=|\bin\b)"""
    found = subprocess.run(["grep", "-rnE", pattern, str(SRC), "--include=*.py", "--exclude-dir=layers"],
                           capture_output=True, text=True).stdout
    assert found == "", found


class GatedLoRALayer(AdapterLayer):
    """A throwaway method: LoRA with a learned scalar gate, delta(x) = s * g * B A x (g starts at 1)."""

    def reset_parameters(self, config) -> None:
        self.lora_A = nn.Parameter(init_uniform_(torch.empty(self.r, self.in_features), self.in_features))  # [r, d_in]
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r))  # [d_out, r]
        if not config.init_weights:
            init_uniform_(self.lora_B.data, self.r)
        self.gate = nn.Parameter(torch.ones(1))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * (self.scaling * self.gate)

    def lora_factors(self, **routing) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B * (self.scaling * self.gate)


GATED = dict(method="gated_lora", r=3)


@pytest.fixture
def gated_lora(monkeypatch):
    monkeypatch.setitem(LAYERS, "gated_lora", GatedLoRALayer)  # the one registry line
    monkeypatch.setitem(PARAMETERS, "gated_lora", lambda d_in, d_out, f: f.r * (d_in + d_out) + 1)  # its table row
    monkeypatch.setattr("method_table.CASES", CASES + [("gated_lora", GATED)])


COMMON_CHECKS = {
    "zero_init": lambda tmp: test_methods.test_zero_init_equals_base("llama", GATED),
    "gradients": lambda tmp: test_methods.test_every_trainable_parameter_gets_a_gradient("llama", GATED),
    "changes_output": lambda tmp: test_methods.test_adapter_changes_output_and_preserves_shapes("llama", GATED),
    "save_load": lambda tmp: test_methods.test_save_load_round_trip("llama", GATED, tmp),
    "generate_bf16": lambda tmp: test_methods.test_generate_and_bf16("llama", GATED),
    "parameter_count": lambda tmp: test_methods.test_parameter_counts_match_the_formulas("llama", GATED),
    "count_without_building": lambda tmp: test_methods.test_count_parameters_without_building("t5", GATED),
    "fast_path_train": lambda tmp: test_fast_path.test_fast_path_equals_reference("gated_lora", GATED, (3, 5, 12), "train"),
    "fast_path_eval_2d": lambda tmp: test_fast_path.test_fast_path_equals_reference("gated_lora", GATED, (3, 12), "eval"),
    "export_to_peft": lambda tmp: test_peft_equivalence.test_export_lora_reproduces_the_model_in_peft("t5", GATED, tmp),
}


@pytest.mark.parametrize("check", list(COMMON_CHECKS))
def test_a_new_method_is_one_file_and_one_registry_line(gated_lora, check, tmp_path):
    COMMON_CHECKS[check](tmp_path)


def test_a_registered_method_without_a_row_fails_the_table(monkeypatch):
    monkeypatch.setitem(LAYERS, "gated_lora", GatedLoRALayer)
    with pytest.raises(AssertionError, match="method_table.CASES"):
        test_every_registered_method_has_a_row()
