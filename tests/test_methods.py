"""One table of adapter configurations, each run through the same checks (as PEFT's test suite does)."""
from __future__ import annotations

import pytest
import torch

from skillmix import LAYERS, SkillMixConfig, SkillMixError, get_model, load_model

from method_table import MODEL_PARAMETERS, PARAMETERS, params, routing_inputs
from tiny_models import BUILDERS, batch

TARGETS = {"llama": ["q_proj", "v_proj", "o_proj"], "t5": ["q", "v"], "gpt2": ["c_attn"]}
GPT2_CASES = ("lora", "molora", "poly", "orchmoe")
TABLE = params("llama", "t5") + params("gpt2", only=lambda name, _: name in GPT2_CASES)


def make(arch: str, fields: dict, seed: int = 0, **overrides):
    base = BUILDERS[arch](seed)
    config = SkillMixConfig(target_modules=TARGETS[arch], **{**fields, **overrides})
    return base, get_model(base, config)



@pytest.mark.parametrize("arch,fields", TABLE)
def test_zero_init_equals_base(arch, fields):
    data = batch(arch)
    with torch.no_grad():
        reference = BUILDERS[arch](0)(**data).logits
        _, model = make(arch, fields)
        for mode in ("eval", "train"):
            getattr(model, mode)()
            out = model(**data, **routing_inputs(model.adapter_config)).logits
            assert torch.equal(out, reference), mode


@pytest.mark.parametrize("arch,fields", TABLE)
def test_every_trainable_parameter_gets_a_gradient(arch, fields):
    _, model = make(arch, fields, init_weights=False)
    model.train()
    out = model(**batch(arch), **routing_inputs(model.adapter_config))
    out.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not n.endswith(".weight") or "task_router" in n for n in trainable)
    missing = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("arch,fields", TABLE)
def test_adapter_changes_output_and_preserves_shapes(arch, fields):
    data = batch(arch)
    base, model = make(arch, fields, init_weights=False)
    with torch.no_grad():
        with model.disable_adapter():
            reference = model(**data, **routing_inputs(model.adapter_config)).logits
        out = model(**data, **routing_inputs(model.adapter_config)).logits
    assert out.shape == reference.shape and out.dtype == reference.dtype
    assert not torch.allclose(out, reference)


@pytest.mark.parametrize("arch,fields", TABLE)
def test_save_load_round_trip(arch, fields, tmp_path):
    data = batch(arch)
    _, model = make(arch, fields, init_weights=False)
    model.eval()
    with torch.no_grad():
        expected = model(**data, **routing_inputs(model.adapter_config)).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    restored = load_model(BUILDERS[arch](0), tmp_path)
    with torch.no_grad():
        out = restored(**data, **routing_inputs(restored.adapter_config)).logits
    assert torch.equal(out, expected)
    assert restored.num_trainable_parameters() == 0  # loaded for inference, as PEFT does
    assert load_model(BUILDERS[arch](0), tmp_path, is_trainable=True).num_trainable_parameters() == model.num_trainable_parameters()


@pytest.mark.parametrize("arch,fields", [p for p in TABLE if p.values[0] in ("llama", "t5")])
def test_generate_and_bf16(arch, fields):
    data = batch(arch)
    _, model = make(arch, fields, init_weights=False)
    model.eval()
    kwargs = routing_inputs(model.adapter_config)
    out = model.generate(input_ids=data["input_ids"], attention_mask=data["attention_mask"], max_new_tokens=3,
                         do_sample=False, num_beams=2, pad_token_id=0, **kwargs)
    assert out.shape[0] == 3
    model.base_model.to(torch.bfloat16)
    with torch.no_grad():
        logits = model(**data, **kwargs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("arch,fields", TABLE)
def test_parameter_counts_match_the_formulas(arch, fields):
    base, model = make(arch, fields)
    f = model.adapter_config
    shapes = {"llama": [(32, 32), (32, 16), (32, 32)], "t5": [(32, 32), (32, 32)], "gpt2": [(32, 96)]}[arch]
    n_blocks = {"llama": 2, "t5": 4, "gpt2": 2}[arch]  # t5: self-attn in 2 encoder + 2 decoder blocks,
    if arch == "t5":  # plus cross-attention q, v in the 2 decoder blocks
        layers = shapes * n_blocks + shapes * 2
    else:
        layers = shapes * n_blocks
    if f.method not in PARAMETERS:
        pytest.fail(f"method {f.method!r} has no parameter formula in method_table.PARAMETERS")
    expected = sum(PARAMETERS[f.method](d_in, d_out, f) for d_in, d_out in layers)
    expected += MODEL_PARAMETERS.get(f.method, lambda d_model, config: 0)(32, f)
    assert model.num_trainable_parameters() == expected
    assert len(model.adapter_layers) == len(layers)


@pytest.mark.parametrize("fields,field", [
    (dict(method="prefix"), "method"),
    (dict(method="lora", r=0), "r"),
    (dict(method="lora", r=2.5), "r"),
    (dict(method="lora", lora_dropout=1.0), "lora_dropout"),
    (dict(method="lora", lora_alpha=-1), "lora_alpha"),
    (dict(method="molora", num_experts=2, top_k=3), "top_k"),
    (dict(method="mode", r=4, expert_rank=3), "expert_rank"),
    (dict(method="poly", n_splits=2), "n_splits"),
    (dict(method="orchmoe", n_abstract_tasks=0), "n_abstract_tasks"),
    (dict(method="orchmoe", mix="input"), "mix"),
    (dict(method="orchmoe", task_router="oracle"), "task_router"),
    (dict(method="orchmoe", skill_router="hard"), "skill_router"),
    (dict(method="orchmoe", gumbel_temperature=0.0), "gumbel_temperature"),
    (dict(method="lora", target_modules=[]), "target_modules"),
])
def test_invalid_config_names_the_field(fields, field):
    with pytest.raises(SkillMixError, match=rf"SkillMixConfig\.{field}=.*expected"):
        SkillMixConfig(**fields)


def test_unmatched_target_lists_linear_layers():
    with pytest.raises(SkillMixError, match="matched no linear layer.*q_proj.*v_proj"):
        get_model(BUILDERS["llama"](0), SkillMixConfig(method="lora", target_modules=["query"]))


def test_default_targets_per_model_type():
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method="lora"))
    assert sorted({n.rsplit(".", 1)[-1] for n in model.adapter_layers}) == ["q_proj", "v_proj"]


def test_mhr_heads_must_divide_layer_width():
    with pytest.raises(SkillMixError, match="n_splits=3 must divide"):
        make("llama", dict(method="mhr", n_splits=3))


@pytest.mark.parametrize("method", [m for m in LAYERS if LAYERS[m].uses_task_ids])
def test_task_ids_required_and_checked(method):
    _, model = make("llama", dict(method=method, n_tasks=2))
    data = batch("llama")
    with pytest.raises(SkillMixError, match="needs task_ids"):
        model(**data)
    with pytest.raises(SkillMixError, match=r"task_ids must lie in \[0, n_tasks=2\)"):
        model(**data, task_ids=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("method", [m for m in LAYERS if not LAYERS[m].uses_task_ids])
def test_task_ids_refused_by_methods_that_route_without_them(method):
    _, model = make("llama", dict(method=method))
    with pytest.raises(SkillMixError, match="routes without task ids"):
        model(**batch("llama"), task_ids=torch.tensor([0, 1, 2]))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(SkillMixError, match="adapter_config.json: not found"):
        load_model(BUILDERS["llama"](0), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(SkillMixError, match="adapter_config.json: invalid JSON"):
        load_model(BUILDERS["llama"](0), tmp_path)
    _, model = make("llama", dict(method="orchmoe"))
    model.save_pretrained(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SkillMixError, match="adapter_model.safetensors: cannot read adapter weights"):
        load_model(BUILDERS["llama"](0), tmp_path)


@pytest.mark.parametrize("arch,fields", TABLE)
def test_count_parameters_without_building(arch, fields):
    from skillmix.model import count_parameters

    base = BUILDERS[arch](0)
    config = SkillMixConfig(target_modules=TARGETS[arch], **fields)
    predicted = count_parameters(base, config)
    assert not any(isinstance(m, torch.nn.Module) and hasattr(m, "lora_A") for m in base.modules())  # untouched
    assert predicted == get_model(base, config).num_trainable_parameters()
