"""Each layer against a plain, loop-over-experts reference; reductions between methods; router validity."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from skillmix import SkillMixConfig, get_model
from skillmix.layers import LAYERS
from skillmix.routing import RoutingContext, TaskRouter, load_balancing_loss
from tiny_models import BUILDERS, batch

D_IN, D_OUT, B, T = 12, 8, 3, 5


def make_layer(**fields):
    torch.manual_seed(0)
    config = SkillMixConfig(init_weights=False, **fields)
    ctx = RoutingContext()
    layer = LAYERS[config.method](nn.Linear(D_IN, D_OUT), config, ctx, "layer")
    if getattr(layer, "allocation_logits", None) is not None:
        with torch.no_grad():
            layer.allocation_logits.normal_()  # rows that differ: the allocation matters
    return layer, ctx


def x_input():
    return torch.randn(B, T, D_IN, generator=torch.Generator().manual_seed(5))


def test_molora_reference():
    layer, _ = make_layer(method="molora", r=3, num_experts=4, lora_alpha=6)
    x = x_input()
    p = torch.softmax(x @ layer.router.T, -1)
    ref = sum(p[..., e:e + 1] * (x @ layer.lora_A[e].T @ layer.lora_B[e].T) for e in range(4)) * 2.0
    assert torch.allclose(layer(x) - layer.base_layer(x), ref, atol=1e-6)


def test_molora_top_k_masks_without_renormalising():
    layer, ctx = make_layer(method="molora", r=2, num_experts=4, top_k=2)
    layer(x_input())
    probs = ctx.record["layer"]
    assert ((probs > 0).sum(-1) == 2).all() and (probs.sum(-1) < 1).all()


@pytest.mark.parametrize("p", [1, 2, 4])
def test_mode_reference(p):
    layer, _ = make_layer(method="mode", r=4, num_experts=3, expert_rank=p)
    x = x_input()
    ref = torch.zeros(B, T, D_OUT)
    for k in range(4 // p):  # groups of p rank positions
        probs = torch.softmax(x @ layer.router[k].T, -1)  # [B, T, m]
        for i in range(3):
            for j in range(k * p, (k + 1) * p):
                ref += probs[..., i:i + 1] * (x @ layer.lora_A[j])[..., None] * layer.lora_B[i, :, j]
    assert torch.allclose(layer(x) - layer.base_layer(x), ref, atol=1e-6)


def test_molora_sd_reference():
    layer, _ = make_layer(method="molora_sd", r=4, num_experts=3)
    x = x_input()
    probs = torch.softmax(x @ layer.router[0].T, -1)
    ref = sum(probs[..., e:e + 1] * (x @ layer.lora_A.T @ layer.lora_B[e].T) for e in range(3))
    assert torch.allclose(layer(x) - layer.base_layer(x), ref, atol=1e-6)


@pytest.mark.parametrize("mix", ["output", "poly"])
def test_orchmoe_reference(mix):
    layer, ctx = make_layer(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=4, mix=mix)
    layer.eval()
    x = x_input()
    w = torch.softmax(torch.randn(B, 4), -1)
    ctx.task_weights = w
    z = torch.sigmoid(layer.allocation_logits)
    z = z / z.sum(-1, keepdim=True)
    ref = torch.zeros(B, T, D_OUT)
    for b in range(B):
        if mix == "output":  # sum_i sum_j w_i Z_ij B_j A_j x
            for i in range(4):
                for j in range(3):
                    ref[b] += w[b, i] * z[i, j] * (x[b] @ layer.lora_A[j].T @ layer.lora_B[j].T)
        else:
            alpha = w[b] @ z
            a = sum(alpha[j] * layer.lora_A[j] for j in range(3))
            bb = sum(alpha[j] * layer.lora_B[j] for j in range(3))
            ref[b] = x[b] @ a.T @ bb.T
    assert torch.allclose(layer(x) - layer.base_layer(x), ref, atol=1e-6)
    assert torch.allclose(ctx.record["layer"].sum(-1), torch.ones(B))


def test_orchmoe_gumbel_in_training_only():
    layer, ctx = make_layer(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=2)
    ctx.task_weights = torch.full((B, 2), 0.5)
    x = x_input()
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    alpha1 = (layer(x), ctx.record["layer"])[1]
    alpha2 = (layer(x), ctx.record["layer"])[1]
    assert not torch.equal(alpha1, alpha2)
    assert not torch.equal(alpha1[0], alpha1[1])  # one draw per example
    assert torch.allclose(alpha1.sum(-1), torch.ones(B), atol=1e-6) and (alpha1 >= 0).all()


def test_task_router_is_a_distribution_over_prompt_tokens_only():
    router = TaskRouter(D_IN, 4, 6)
    emb = torch.randn(B, T, D_IN)
    mask = torch.ones(B, T)
    mask[:, 3:] = 0
    w = router(emb, mask)
    assert torch.allclose(w.sum(-1), torch.ones(B)) and (w > 0).all()
    emb2 = emb.clone()
    emb2[:, 3:] = 100.0  # targets/padding must not change the routing
    assert torch.allclose(router(emb2, mask), w)


def _copy_lora(src, dst_a, dst_b):
    with torch.no_grad():
        dst_a.copy_(src.lora_A.reshape(dst_a.shape))
        dst_b.copy_(src.lora_B.reshape(dst_b.shape))


@pytest.mark.parametrize("fields", [
    dict(method="molora", num_experts=1),
    dict(method="molora_sd", num_experts=1),
    dict(method="mode", num_experts=1, expert_rank=1),
    dict(method="orchmoe", n_skills=1, n_abstract_tasks=1),
    dict(method="orchmoe", n_skills=1, n_abstract_tasks=1, mix="poly"),
], ids=["molora", "molora_sd", "mode", "orchmoe", "orchmoe_polymix"])
def test_single_expert_reduces_to_lora(fields):
    data = batch("llama")
    lora = get_model(BUILDERS["llama"](0), SkillMixConfig(method="lora", r=4, init_weights=False)).eval()
    other = get_model(BUILDERS["llama"](0), SkillMixConfig(r=4, **fields)).eval()
    for name, layer in other.adapter_layers.items():
        _copy_lora(lora.adapter_layers[name], layer.lora_A, layer.lora_B)
    with torch.no_grad():
        assert (lora(**data).logits - other(**data).logits).abs().max() <= 1e-5


def test_mode_with_full_rank_experts_equals_molora_sd():
    data = batch("llama")
    sd = get_model(BUILDERS["llama"](0), SkillMixConfig(method="molora_sd", r=4, num_experts=3, init_weights=False)).eval()
    mode = get_model(BUILDERS["llama"](0), SkillMixConfig(method="mode", r=4, num_experts=3, expert_rank=4)).eval()
    mode.load_adapter_state_dict(sd.adapter_state_dict())
    with torch.no_grad():
        assert (sd(**data).logits - mode(**data).logits).abs().max() <= 1e-6


def test_orchmoe_polymix_with_one_hot_task_weights_equals_poly():
    data = batch("llama")
    n_tasks = 3
    poly = get_model(BUILDERS["llama"](0), SkillMixConfig(method="poly", r=2, n_skills=4, n_tasks=n_tasks, lora_alpha=1,
                                                          init_weights=False)).eval()
    orch = get_model(BUILDERS["llama"](0), SkillMixConfig(method="orchmoe", r=2, n_skills=4, n_abstract_tasks=n_tasks,
                                                          mix="poly", lora_alpha=1)).eval()
    with torch.no_grad():
        for name, layer in orch.adapter_layers.items():
            p = poly.adapter_layers[name]
            p.allocation_logits.normal_()
            layer.lora_A.copy_(p.lora_A[0].transpose(1, 2))  # [S, d_in, r] -> [S, r, d_in]
            layer.lora_B.copy_(p.lora_B[0].transpose(1, 2))  # [S, r, d_out] -> [S, d_out, r]
            layer.allocation_logits.copy_(p.allocation_logits)
        task_ids = torch.tensor([2, 0, 1])
        one_hot = torch.nn.functional.one_hot(task_ids, n_tasks).float()
        assert (poly(**data, task_ids=task_ids).logits - orch(**data, task_weights=one_hot).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["molora", "mode", "molora_sd"])
def test_token_router_probabilities_are_distributions_and_recorded(method):
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method=method, r=4, num_experts=3))
    model(**batch("llama"))
    routing = model.last_routing()
    assert set(routing["layers"]) == set(model.adapter_layers)
    for probs in routing["layers"].values():
        assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1])) and (probs >= 0).all()


def test_orchmoe_routing_info():
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method="orchmoe", r=2, n_skills=3, n_abstract_tasks=5))
    model(**batch("llama"))
    info = model.last_routing()
    assert info["task_weights"].shape == (3, 5) and torch.allclose(info["task_weights"].sum(-1), torch.ones(3))
    assert all(a.shape == (5, 3) for a in info["allocation"].values())
    assert all(a.shape == (3, 3) for a in info["layers"].values())


def test_load_balancing_loss_values_and_opt_in():
    uniform = torch.full((10, 4), 0.25)
    collapsed = torch.nn.functional.one_hot(torch.zeros(10, dtype=torch.long), 4).float()
    assert torch.isclose(load_balancing_loss(uniform), torch.tensor(1.0))
    assert torch.isclose(load_balancing_loss(collapsed), torch.tensor(4.0))
    data = batch("llama")
    off = get_model(BUILDERS["llama"](0), SkillMixConfig(method="molora", r=2)).train()
    off(**data)
    assert off.aux_loss().item() == 0.0
    on = get_model(BUILDERS["llama"](0), SkillMixConfig(method="molora", r=2, load_balancing_coef=0.1)).train()
    on(**data)
    loss = on.aux_loss()
    assert loss.item() > 0 and loss.requires_grad
    loss.backward()
    assert all(layer.router.grad is not None for layer in on.adapter_layers.values())


def test_orchmoe_routing_fixed_during_generation():
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method="orchmoe", r=2, init_weights=False)).eval()
    data = batch("llama")
    seen = []
    layer = next(iter(model.adapter_layers.values()))
    hook = layer.register_forward_hook(lambda *_: seen.append(model.routing.task_weights.clone()))
    model.generate(input_ids=data["input_ids"], attention_mask=data["attention_mask"], max_new_tokens=4,
                   do_sample=False, pad_token_id=0)
    hook.remove()
    assert len(seen) == 4 and all(torch.equal(s, seen[0]) for s in seen)
    expected = model.compute_task_weights(data["input_ids"], data["attention_mask"])
    assert torch.allclose(seen[0], expected)
