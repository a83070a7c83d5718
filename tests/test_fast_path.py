"""The layers' fast path (fused matmuls, in-place accumulation, generation caches) against the reference path."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import RelaxedBernoulli

from skillmix import SkillMixConfig, get_model
from skillmix.routing import RoutingContext, relaxed_bernoulli
from method_table import CASES
from tiny_models import BUILDERS, batch

D_IN, D_OUT, B, T = 12, 8, 3, 5

def _pair(fields):
    """Two layers with identical weights and one context: `fast` and `ref` (fast path switched off)."""
    config = SkillMixConfig(init_weights=False, **fields)
    ctx = RoutingContext()
    ctx.task_ids = torch.tensor([2, 0, 1]) % config.n_tasks
    ctx.task_weights = torch.softmax(torch.randn(B, config.n_abstract_tasks, generator=torch.Generator().manual_seed(3)), -1)
    torch.manual_seed(0)
    fast = config.layer_class(nn.Linear(D_IN, D_OUT), config, ctx, "fast")
    ref = config.layer_class(nn.Linear(D_IN, D_OUT), config, ctx, "ref")
    ref.load_state_dict(fast.state_dict())
    ref.use_fast_path = False
    return fast, ref, ctx


@pytest.mark.parametrize("name,fields", CASES, ids=[name for name, _ in CASES])
@pytest.mark.parametrize("shape", [(B, T, D_IN), (B, D_IN)], ids=["3d", "2d"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fast_path_equals_reference(name, fields, shape, mode):
    fast, ref, ctx = _pair(fields)
    getattr(fast, mode)(), getattr(ref, mode)()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = []
    for layer, xi in zip((fast, ref), xs):
        torch.manual_seed(7)  # the same Gumbel draws in training
        ctx.aux_losses = []
        out = layer(xi)
        assert layer.name in ctx.record or layer.routing == "none"
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + sum(ctx.aux_losses, torch.zeros(()))
        loss.backward()
        outs.append(out)
    assert outs[0].shape == outs[1].shape == (*shape[:-1], D_OUT)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(xs[0].grad, xs[1].grad, atol=1e-5)
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, atol=1e-5), n


def test_fast_path_leaves_hooked_base_output_alone():
    fast, _, _ = _pair(dict(CASES)["lora"])
    seen = []
    fast.base_layer.register_forward_hook(lambda m, i, o: seen.append((o, o.clone())))
    fast(torch.randn(B, T, D_IN))
    kept, copy = seen[0]
    assert torch.equal(kept, copy)  # not updated in place behind the hook's back


def test_relaxed_bernoulli_is_torch_distributions_draw_for_draw():
    logits = torch.randn(4, 3, 5, requires_grad=True)
    torch.manual_seed(3)
    expected = RelaxedBernoulli(temperature=0.7, logits=logits).rsample()
    torch.manual_seed(3)
    got = relaxed_bernoulli(logits, 0.7, training=True)
    assert torch.equal(got, expected)
    grad_expected, = torch.autograd.grad(expected.sum(), logits)
    grad_got, = torch.autograd.grad(got.sum(), logits)
    assert torch.allclose(grad_got, grad_expected, atol=1e-6)


@pytest.mark.parametrize("fields", [dict(method="orchmoe", r=2), dict(method="poly", r=2, n_tasks=3),
                                    dict(method="molora", r=2), dict(method="orchmoe", r=2, mix="poly")],
                         ids=["orchmoe", "poly", "molora", "orchmoe_polymix"])
def test_generation_cache_matches_uncached_decoding(fields):
    """generate (routing and derived weights cached across decoding steps) against a greedy loop of full
    forwards (every forward resets the context, so nothing is reused)."""
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(init_weights=False, **fields)).eval()
    data = batch("llama")
    ids, mask = data["input_ids"], data["attention_mask"]
    routing = {"task_ids": torch.tensor([2, 0, 1])} if model.adapter_config.uses_task_ids else {}
    with torch.no_grad():
        if model.layer_class.uses_task_weights:
            routing = {"task_weights": model.compute_task_weights(ids, mask)}
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True, **routing)
        seq, done = ids, torch.zeros(len(ids), dtype=torch.bool)
        for step in range(5):
            step_mask = torch.cat([mask, torch.ones(len(ids), step, dtype=mask.dtype)], 1)
            positions = (step_mask.cumsum(-1) - 1).clamp_min(0)
            logits = model(input_ids=seq, attention_mask=step_mask, position_ids=positions, use_cache=False, **routing).logits[:, -1]
            assert torch.allclose(logits, out.scores[step], atol=1e-4), step
            token = logits.argmax(-1).masked_fill(done, 0)  # after EOS (2) generate pads with pad_token_id 0
            done |= token == 2
            seq = torch.cat([seq, token[:, None]], 1)
    assert torch.equal(out.sequences, seq)


def test_generation_cache_sees_weight_updates():
    model = get_model(BUILDERS["llama"](0), SkillMixConfig(method="poly", r=2, n_tasks=3, init_weights=False)).eval()
    data = batch("llama")
    ids = torch.tensor([2, 0, 1])
    with torch.no_grad():
        first = model(**data, task_ids=ids).logits
        for layer in model.adapter_layers.values():
            layer.lora_B.mul_(2.0)
        second = model(**data, task_ids=ids).logits
    assert not torch.allclose(first, second)
