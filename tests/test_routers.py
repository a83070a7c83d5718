"""OrchMoE's task router: a data-dependent start that separates tasks hidden behind a shared prompt component,
the first version's saddle, the router's own learning rate, and the routing diagnostics of a training run."""
from __future__ import annotations

import json

import pytest
import torch

from skillmix import SkillMixConfig, get_model, load_model
from skillmix.metrics import nmi, routing_statistics
from skillmix.routing import spherical_kmeans
from skillmix.runs import TrainConfig, read_metrics_log
from skillmix.train import parameter_groups, train
from tiny_models import tiny_llama

FIRST_VERSION = dict(router_scoring="dot", allocation_init="poly")


def shared_instruction_prompts(n_tasks: int = 4, per_task: int = 16, seed: int = 0):
    """Prompts that are mostly one shared instruction (12 tokens), then 2 task-marker tokens and 1 random input
    token: as in SuperNI, the pooled prompt embeddings of different tasks are nearly parallel."""
    g = torch.Generator().manual_seed(seed)
    ids, tasks = [], []
    for t in range(n_tasks):
        for _ in range(per_task):
            ids.append(list(range(3, 15)) + [40 + 2 * t, 41 + 2 * t, int(torch.randint(15, 40, (1,), generator=g))])
            tasks.append(t)
    ids = torch.tensor(ids)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, -100)}, tasks


def orchmoe(seed: int = 0, **fields):
    torch.manual_seed(seed)
    config = SkillMixConfig(method="orchmoe", r=2, n_skills=4, n_abstract_tasks=4, router_dim=8, **fields)
    return get_model(tiny_llama(seed), config)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_router_separates_tasks_from_the_start_and_the_first_version_sits_on_a_saddle(seed):
    batch, tasks = shared_instruction_prompts(seed=seed)
    new, old = orchmoe(seed), orchmoe(seed, **FIRST_VERSION)
    for model in (new, old):
        model.fit_task_router([batch], kmeans=True, seed=seed)  # a no-op for the first version
    with torch.no_grad():
        w_new = new.compute_task_weights(batch["input_ids"], batch["attention_mask"])
        w_old = old.compute_task_weights(batch["input_ids"], batch["attention_mask"])
    assert nmi(tasks, w_new.argmax(-1).tolist()) >= 0.9
    assert w_new.max(-1).values.min() > 0.9  # confident, not a near-uniform argmax
    assert (w_old - 0.25).abs().max() < 1e-3  # the first version: w within 1e-3 of uniform, argmax is noise
    z = old.adapter_layers["model.layers.0.self_attn.q_proj"].allocation_logits
    assert z.abs().max() <= 1e-3  # ... and Theta's rows equal to 1e-3: alpha hardly depends on w
    rows = new.adapter_layers["model.layers.0.self_attn.q_proj"].allocation_logits
    assert (rows[0] - rows[1]).abs().max() > 0.1  # rows that differ from the start


def test_router_without_kmeans_keeps_random_keys_but_standardises():
    batch, _ = shared_instruction_prompts()
    model = orchmoe()
    keys = model.task_router.keys.detach().clone()
    model.fit_task_router([batch], kmeans=False)
    assert torch.equal(model.task_router.keys, keys)
    features = model.prompt_features(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(model.task_router.feature_mean, features.mean(0), atol=1e-6)


def test_spherical_kmeans_finds_separated_directions():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    x = torch.cat([c + 0.05 * torch.randn(20, 16, generator=g) for c in centres])
    found = spherical_kmeans(x, 3, seed=1).float()
    assert (found @ centres.T).amax(0).min() > 0.99  # every true centre found


def test_router_statistics_and_first_version_configs_load(tmp_path):
    model = orchmoe(init_weights=False)
    model.fit_task_router([shared_instruction_prompts()[0]])
    model.save_pretrained(tmp_path / "new")
    restored = load_model(tiny_llama(0), tmp_path / "new")  # the fitted statistics travel with the adapter
    assert torch.equal(restored.task_router.feature_std, model.task_router.feature_std)
    old = orchmoe(**FIRST_VERSION)
    old.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "adapter_config.json"
    data = json.loads(path.read_text())
    for key in FIRST_VERSION:  # a file written before these fields existed
        del data[key]
    path.write_text(json.dumps(data))
    assert load_model(tiny_llama(0), tmp_path / "old").adapter_config.router_scoring == "dot"


def test_routing_statistics_values():
    one_hot = torch.eye(4)[[0, 1, 2, 3]]
    stats = routing_statistics(one_hot, {})
    assert stats["task_router_entropy"] == pytest.approx(0.0, abs=1e-5) and stats["task_router_max_share"] == 0.25
    uniform = routing_statistics(torch.full((5, 4), 0.25), {"layer": torch.full((2, 3, 4), 0.25)})
    assert uniform["task_router_entropy"] == pytest.approx(1.0) and uniform["task_router_spread"] == 0.0
    assert uniform["token_router_entropy"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["orchmoe", "poly", "molora"])
def test_router_lr_gets_its_own_group_of_exactly_the_routing_parameters(method):
    model = get_model(tiny_llama(0), SkillMixConfig(method=method, r=2, n_tasks=3))
    assert len(parameter_groups(model, None)) == 1
    groups = parameter_groups(model, 0.1)
    state = model.adapter_state_dict()
    routing = {id(state[k]) for k in model.routing_parameter_names()}
    assert groups[1]["lr"] == 0.1 and {id(p) for p in groups[1]["params"]} == routing
    assert not routing & {id(p) for p in groups[0]["params"]}
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_trainable_parameters()


def test_training_logs_routing_and_probes_the_task_router(tmp_path):
    cfg = TrainConfig(method="orchmoe", model="tiny-llama", output_dir=str(tmp_path / "run"), tasks=3, n_test=2,
                      max_train_instances=8, batch_size=4, max_source_tokens=96, max_target_tokens=16, lr=1e-2,
                      router_lr=5e-2, max_steps=5, probe_steps=2)
    train(cfg)
    records = read_metrics_log(tmp_path / "run")
    probes = [r["step"] for r in records if "probe_nmi" in r]
    assert probes == [0, 2, 4, 5]  # before training, every probe_steps and at the last step
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 5 and all(r["router_lr"] == pytest.approx(5 * r["lr"]) for r in steps)  # one schedule, two rates
    assert all(0.0 <= r["task_router_entropy"] <= 1.0 and r["task_router_spread"] >= 0 for r in steps)
    assert records[0]["step"] == 0 and 0.0 <= records[0]["probe_purity"] <= 1.0
