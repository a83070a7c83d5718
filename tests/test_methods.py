"""One table of adapter configurations, each run through the same checks (as PEFT's test suite does)."""
from __future__ import annotations

import pytest
import torch

from skillmix import METHODS, SkillMixConfig, SkillMixError, get_model, load_model

from tiny_models import BUILDERS, batch

TARGETS = {"llama": ["q_proj", "v_proj", "o_proj"], "t5": ["q", "v"], "gpt2": ["c_attn"]}

# (id, config fields); every method appears, plus the variants that change the computation.
CASES = [
    ("lora", dict(method="lora", r=4, lora_alpha=8)),
    ("molora", dict(method="molora", r=2, num_experts=3)),
    ("molora_top1", dict(method="molora", r=2, num_experts=3, top_k=1)),
    ("molora_sd", dict(method="molora_sd", r=4, num_experts=3)),
    ("mode", dict(method="mode", r=4, num_experts=3)),
    ("mode_p2", dict(method="mode", r=4, num_experts=3, expert_rank=2)),
    ("poly", dict(method="poly", r=2, n_skills=3, n_tasks=3)),
    ("mhr", dict(method="mhr", r=2, n_skills=3, n_tasks=3, n_splits=4)),
    ("orchmoe", dict(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=2, router_dim=8)),
    ("orchmoe_polymix", dict(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=2, router_dim=8, mix="poly")),
    ("orchmoe_no_task_router", dict(method="orchmoe", r=2, n_skills=3, task_router="uniform")),
    ("orchmoe_no_skill_router", dict(method="orchmoe", r=2, n_skills=3, router_dim=8, skill_router="uniform")),
]
assert {c["method"] for _, c in CASES} == set(METHODS)
ARCHS = ["llama", "t5"]
TABLE = [pytest.param(arch, fields, id=f"{arch}-{name}") for arch in ARCHS for name, fields in CASES]
TABLE += [pytest.param("gpt2", fields, id=f"gpt2-{name}") for name, fields in CASES if name in ("lora", "molora", "poly", "orchmoe")]


def make(arch: str, fields: dict, seed: int = 0, **overrides):
    base = BUILDERS[arch](seed)
    config = SkillMixConfig(target_modules=TARGETS[arch], **{**fields, **overrides})
    return base, get_model(base, config)


def routing_kwargs(config: SkillMixConfig, bsz: int = 3) -> dict:
    return {"task_ids": torch.arange(bsz) % config.n_tasks} if config.uses_task_ids else {}


@pytest.mark.parametrize("arch,fields", TABLE)
def test_zero_init_equals_base(arch, fields):
    data = batch(arch)
    with torch.no_grad():
        reference = BUILDERS[arch](0)(**data).logits
        _, model = make(arch, fields)
        for mode in ("eval", "train"):
            getattr(model, mode)()
            out = model(**data, **routing_kwargs(model.adapter_config)).logits
            assert torch.equal(out, reference), mode


@pytest.mark.parametrize("arch,fields", TABLE)
def test_every_trainable_parameter_gets_a_gradient(arch, fields):
    _, model = make(arch, fields, init_weights=False)
    model.train()
    out = model(**batch(arch), **routing_kwargs(model.adapter_config))
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
            reference = model(**data, **routing_kwargs(model.adapter_config)).logits
        out = model(**data, **routing_kwargs(model.adapter_config)).logits
    assert out.shape == reference.shape and out.dtype == reference.dtype
    assert not torch.allclose(out, reference)


@pytest.mark.parametrize("arch,fields", TABLE)
def test_save_load_round_trip(arch, fields, tmp_path):
    data = batch(arch)
    _, model = make(arch, fields, init_weights=False)
    model.eval()
    with torch.no_grad():
        expected = model(**data, **routing_kwargs(model.adapter_config)).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    restored = load_model(BUILDERS[arch](0), tmp_path)
    with torch.no_grad():
        out = restored(**data, **routing_kwargs(restored.adapter_config)).logits
    assert torch.equal(out, expected)
    assert restored.num_trainable_parameters() == 0  # loaded for inference, as PEFT does
    assert load_model(BUILDERS[arch](0), tmp_path, is_trainable=True).num_trainable_parameters() == model.num_trainable_parameters()


@pytest.mark.parametrize("arch,fields", [p for p in TABLE if p.values[0] in ("llama", "t5")])
def test_generate_and_bf16(arch, fields):
    data = batch(arch)
    _, model = make(arch, fields, init_weights=False)
    model.eval()
    kwargs = routing_kwargs(model.adapter_config)
    out = model.generate(input_ids=data["input_ids"], attention_mask=data["attention_mask"], max_new_tokens=3,
                         do_sample=False, num_beams=2, pad_token_id=0, **kwargs)
    assert out.shape[0] == 3
    model.base_model.to(torch.bfloat16)
    with torch.no_grad():
        logits = model(**data, **kwargs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def _per_layer_count(method: str, d_in: int, d_out: int, f: SkillMixConfig) -> int:
    """Parameter counts of METHODS.md §1.4, §2.6, §3.3, §4.3, written independently of the layers."""
    r = f.r
    if method == "lora":
        return r * (d_in + d_out)
    if method == "molora":
        return f.num_experts * r * (d_in + d_out) + f.num_experts * d_in
    if method == "molora_sd":
        return r * d_in + f.num_experts * r * d_out + f.num_experts * d_in
    if method == "mode":
        return r * d_in + f.num_experts * r * d_out + (r // f.expert_rank) * f.num_experts * d_in
    if method in ("poly", "mhr"):
        return f.n_skills * r * (d_in + d_out) + f.n_tasks * f.n_splits * f.n_skills
    allocation = f.n_abstract_tasks * f.n_skills if f.skill_router == "learned" else 0
    return f.n_skills * r * (d_in + d_out) + allocation


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
    expected = sum(_per_layer_count(f.method, d_in, d_out, f) for d_in, d_out in layers)
    if f.method == "orchmoe" and f.task_router == "attention" and f.skill_router == "learned":
        expected += 32 * f.router_dim + f.n_abstract_tasks * f.router_dim
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


@pytest.mark.parametrize("method", ["poly", "mhr"])
def test_task_ids_required_and_checked(method):
    _, model = make("llama", dict(method=method, n_tasks=2))
    data = batch("llama")
    with pytest.raises(SkillMixError, match="needs task_ids"):
        model(**data)
    with pytest.raises(SkillMixError, match=r"task_ids must lie in \[0, n_tasks=2\)"):
        model(**data, task_ids=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("method", ["lora", "molora", "molora_sd", "mode", "orchmoe"])
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
