"""skillmix lora/poly/mhr against PEFT on the same weights, and LoRA export/merge through PEFT."""
from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, PolyConfig, get_peft_model

from skillmix import SkillMixConfig, SkillMixError, get_model, load_model
from method_table import export_routing, forward_routing, params
from tiny_models import BUILDERS, batch

TOL = 1e-5


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("arch,targets", [("llama", ["q_proj", "v_proj", "o_proj"]), ("t5", ["q", "v"]), ("gpt2", ["c_attn"])])
def test_lora_saved_by_skillmix_loads_in_peft(arch, targets, tmp_path):
    data = batch(arch)
    model = get_model(BUILDERS[arch](0), SkillMixConfig(method="lora", r=4, lora_alpha=8, target_modules=targets, init_weights=False))
    model.eval()
    with torch.no_grad():
        expected = model(**data).logits
    model.save_pretrained(tmp_path)
    peft_model = PeftModel.from_pretrained(BUILDERS[arch](0), tmp_path).eval()
    with torch.no_grad():
        assert _max_diff(peft_model(**data).logits, expected) <= TOL
    # and back: PEFT's own save loads in skillmix
    peft_dir = tmp_path / "peft"
    peft_model.save_pretrained(peft_dir)
    with torch.no_grad():
        assert _max_diff(load_model(BUILDERS[arch](0), peft_dir)(**data).logits, expected) <= TOL


def test_lora_matches_peft_in_train_mode_with_dropout_off():
    data = batch("llama")
    peft_model = get_peft_model(BUILDERS["llama"](0), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                               init_lora_weights=False))
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method="lora", r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, layer in model.adapter_layers.items():
            peft_layer = peft_model.base_model.model.get_submodule(name)
            layer.lora_A.copy_(peft_layer.lora_A["default"].weight)
            layer.lora_B.copy_(peft_layer.lora_B["default"].weight)
    peft_model.train(), model.train()
    out_peft, out = peft_model(**data), model(**data)
    assert _max_diff(out_peft.logits, out.logits) <= TOL
    out_peft.loss.backward(), out.loss.backward()
    for name, layer in model.adapter_layers.items():
        peft_layer = peft_model.base_model.model.get_submodule(name)
        assert _max_diff(layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad) <= TOL


def _poly_pair(n_splits: int):
    method = "poly" if n_splits == 1 else "mhr"
    targets = ["q_proj", "v_proj", "o_proj"]
    peft_model = get_peft_model(BUILDERS["llama"](0), PolyConfig(r=2, n_tasks=3, n_skills=4, n_splits=n_splits,
                                                                target_modules=targets, init_weights=False, task_type="CAUSAL_LM"))
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method=method, r=2, n_tasks=3, n_skills=4, n_splits=n_splits,
                                                           target_modules=targets))
    with torch.no_grad():
        for name, layer in model.adapter_layers.items():
            peft_layer = peft_model.base_model.model.get_submodule(name)
            layer.lora_A.copy_(peft_layer.poly_lora_A["default"])
            layer.lora_B.copy_(peft_layer.poly_lora_B["default"])
            layer.allocation_logits.copy_(peft_layer.poly_router["default"].module_logits.data.normal_())
    return peft_model, model


@pytest.mark.parametrize("n_splits", [1, 4])
def test_poly_and_mhr_match_peft_eval_and_train(n_splits):
    data, task_ids = batch("llama"), torch.tensor([2, 0, 1])
    peft_model, model = _poly_pair(n_splits)
    peft_model.eval(), model.eval()
    with torch.no_grad():
        assert _max_diff(peft_model(**data, task_ids=task_ids).logits, model(**data, task_ids=task_ids).logits) <= TOL
    peft_model.train(), model.train()
    torch.manual_seed(123)
    out_peft = peft_model(**data, task_ids=task_ids)
    torch.manual_seed(123)
    out = model(**data, task_ids=task_ids)  # the same Gumbel draws, in the same order
    assert _max_diff(out_peft.logits, out.logits) <= TOL
    out_peft.loss.backward(), out.loss.backward()
    for name, layer in model.adapter_layers.items():
        peft_logits = peft_model.base_model.model.get_submodule(name).poly_router["default"].module_logits
        assert _max_diff(layer.allocation_logits.grad, peft_logits.grad) <= TOL


def test_lora_merge_and_unload_equals_unmerged():
    data = batch("gpt2")
    model = get_model(BUILDERS["gpt2"](0), SkillMixConfig(method="lora", r=4, target_modules=["c_attn"], init_weights=False)).eval()
    with torch.no_grad():
        expected = model(**data).logits
        merged = model.merge_and_unload()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        assert _max_diff(merged(**data).logits, expected) <= TOL


EXPORT_CASES = params("llama", "t5", only=lambda name, fields: export_routing(SkillMixConfig(**fields)) is not None)


@pytest.mark.parametrize("arch,fields", EXPORT_CASES)
def test_export_lora_reproduces_the_model_in_peft(arch, fields, tmp_path):
    """Every method that routes per sequence (or not at all), collapsed for one fixed routing, is a plain PEFT LoRA."""
    targets = {"llama": ["q_proj", "v_proj"], "t5": ["q", "v"]}[arch]
    data = batch(arch)
    model = get_model(BUILDERS[arch](0), SkillMixConfig(target_modules=targets, init_weights=False, **fields)).eval()
    routing = export_routing(model.adapter_config)
    with torch.no_grad():
        for layer in model.adapter_layers.values():
            for name in layer.routing_parameters:  # spread the allocation logits: rows that differ
                if getattr(layer, name) is not None:
                    getattr(layer, name).normal_()
        expected = model(**data, **forward_routing(model.adapter_config, routing)).logits
    rank = model.export_lora(tmp_path, **routing)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == rank
    peft_model = PeftModel.from_pretrained(BUILDERS[arch](0), tmp_path).eval()
    with torch.no_grad():
        assert _max_diff(peft_model(**data).logits, expected) <= TOL
        assert _max_diff(peft_model.merge_and_unload()(**data).logits, expected) <= TOL


@pytest.mark.parametrize("mix,rank", [("output", 3 * 2), ("poly", 2)])
def test_orchmoe_export_rank(mix, rank, tmp_path):
    """The output mix sums S rank-r skills (rank S*r); the poly mix mixes A and B first (rank r)."""
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=2, mix=mix))
    assert model.export_lora(tmp_path, task_weights=[0.3, 0.7]) == rank


def test_token_routed_methods_refuse_export(tmp_path):
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method="molora", r=2))
    with pytest.raises(SkillMixError, match="routes per token"):
        model.export_lora(tmp_path)
