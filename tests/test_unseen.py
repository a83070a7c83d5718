"""Unseen tasks: the task-level split, zero-shot routing of new tasks (Poly/MHR mean row), few-shot
adaptation (only the claimed parameters change), bad input, and a tiny end-to-end CLI run."""
from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from skillmix import SkillMixConfig, SkillMixError, get_model
from skillmix.adapt import adapt
from skillmix.cli import main
from skillmix.data import load_multitask_data, split_instances, split_tasks
from skillmix.data.superni import first_category, load_task
from skillmix.evaluate import evaluate_run
from skillmix.hub import load_base_model
from skillmix.layers.poly import mean_allocation_logits
from skillmix.routing import normalise_rows
from skillmix.runs import TrainConfig, load_data
from skillmix.train import train

from tiny_models import tiny_llama

TINY = dict(model="tiny-llama", tasks=4, unseen_tasks=0.25, n_test=2, max_train_instances=4, batch_size=4,
            max_source_tokens=64, max_target_tokens=8, lr=1e-2, max_steps=1)


# ---- the task-level split ---------------------------------------------------------------------------
def random_pool(seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    categories = [f"Category {c}" for c in range(rng.randint(1, 6))]
    pool = {f"task{i:03d}_t": [rng.choice(categories)] for i in range(rng.randint(2, 40))}
    pool["task999_none"] = []  # a task without categories: stratum "(none)"
    return pool


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_split_is_deterministic_disjoint_and_stratified(fraction):
    for seed in range(21):
        pool = random_pool(seed)
        seen, unseen = split_tasks(pool, unseen=fraction, seed=seed)
        assert (seen, unseen) == split_tasks(dict(reversed(list(pool.items()))), unseen=fraction, seed=seed)
        assert not set(seen) & set(unseen) and sorted(seen + unseen) == sorted(pool)
        assert seen == sorted(seen) and unseen == sorted(unseen) and seen
        n = len(pool)
        assert len(unseen) == min(n - 1, max(1, int(fraction * n + 0.5)))
        sizes, held = Counter(first_category(c) for c in pool.values()), Counter(first_category(pool[t]) for t in unseen)
        for category, size in sizes.items():  # proportional share of the total, rounded down or up
            share = len(unseen) * size / n
            assert math.floor(share) <= held[category] <= math.ceil(share)
        # a number of random training tasks: the split stays inside that pool
        k = max(2, n // 2)
        seen_k, unseen_k = split_tasks(pool, unseen=fraction, seed=seed, training=k)
        assert len(seen_k) + len(unseen_k) == k and not set(seen_k) & set(unseen_k)
    assert len({tuple(split_tasks(random_pool(3), 0.5, seed=s)[1]) for s in range(10)}) > 1  # the seed matters


def test_named_category_and_official_holdouts():
    pool = {"task001_a": ["X"], "task002_b": ["X"], "task003_c": ["Y"], "task004_d": ["Z"], "task005_e": ["Y"]}
    assert split_tasks(pool, unseen=["task004_d"]) == (["task001_a", "task002_b", "task003_c", "task005_e"], ["task004_d"])
    assert split_tasks(pool, unseen=None, holdout_categories=["Y"], training=["task001_a"]) == (
        ["task001_a"], ["task003_c", "task005_e"])
    seen, unseen = split_tasks(pool, unseen=0.34, holdout_categories=["X"])
    assert {"task001_a", "task002_b"} <= set(unseen) and len(unseen) == 3 and len(seen) == 2
    official = (["task001_a", "task002_b", "task003_c"], ["task004_d"])  # task005_e: excluded
    assert split_tasks(pool, unseen=None, official=official) == (["task001_a", "task002_b", "task003_c"], ["task004_d"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(unseen=["task009_zz"]), "unknown task 'task009_zz'"),
    (dict(unseen=["task001_a"], training=["task001_a", "task002_b"]), "'task001_a' is both a training task and an unseen task"),
    (dict(unseen=None, holdout_categories=["Nope"]), "unseen category 'Nope': no task has it; expected one of: X, Y"),
    (dict(unseen=1.5), r"fraction 1.5: expected a number in \(0, 1\)"),
    (dict(unseen=["task001_a", "task002_b", "task003_c"]), "leaves no training task"),
    (dict(unseen=0.5, training=1), "expected at least 2 to hold some out"),
])
def test_split_errors(kwargs, message):
    pool = {"task001_a": ["X"], "task002_b": ["X"], "task003_c": ["Y"]}
    with pytest.raises(SkillMixError, match=message):
        split_tasks(pool, **kwargs)


def test_unseen_instances_never_train_and_eval_is_disjoint_from_the_pool(tmp_path, data_write_task):
    for i in range(6):
        data_write_task(f"task10{i}_x", n_instances=12)
    data = load_multitask_data(tmp_path, seed=3, n_test=3, max_instances=6, unseen=0.34)
    unseen = data.unseen
    assert len(unseen.tasks) == 2 and not set(unseen.tasks) & set(data.tasks)
    assert {i.task for i in data.train + data.test}.isdisjoint(unseen.tasks)
    for name, task in unseen.tasks.items():
        evaluation = [i.id for i in unseen.test if i.task == name]
        pool = [i.id for i in unseen.train if i.task == name]
        assert len(evaluation) == 3 and len(pool) == 9 and not set(evaluation) & set(pool)  # no max_instances cap
        assert evaluation == [i.id for i in split_instances(load_task(task.path), n_test=3, seed=3)[1]]
    alone = load_multitask_data(tmp_path, names=data.task_names, seed=3, n_test=3, max_instances=6)
    assert [i.id for i in alone.train] == [i.id for i in data.train]  # seen tasks split as without hold-out
    assert data.task_split["unseen"] == unseen.task_names and data.task_split["text"].startswith("task split: 4 seen / 2 unseen")


def test_official_checkout_split(tmp_path, data_write_task):
    for name in ("task001_a", "task002_b", "task003_c", "task004_d"):
        data_write_task(name, n_instances=6)
    splits = tmp_path / "splits" / "default"
    splits.mkdir(parents=True)
    (splits / "train_tasks.txt").write_text("task001_a\ntask002_b\ntask777_absent\n")
    (splits / "test_tasks.txt").write_text("task003_c\n")  # task004_d: in neither list (excluded)
    data = load_multitask_data(tmp_path, n_test=2, unseen="official")
    assert data.task_names == ["task001_a", "task002_b"] and data.unseen.task_names == ["task003_c"]
    assert TrainConfig(unseen_tasks=["official"]).unseen_tasks == "official"  # as the CLI parses it
    with pytest.raises(SkillMixError, match="'task004_d' is not in the official splits/default/train_tasks.txt"):
        load_multitask_data(tmp_path, names=["task004_d"], n_test=2, unseen="official")


# ---- Poly/MHR: the mean row ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["poly", "mhr"])
def test_mean_row_has_the_mean_weights_and_is_removable(method):
    model = get_model(tiny_llama(), SkillMixConfig(method=method, n_tasks=3, n_skills=4, r=2))
    for layer in model.adapter_layers.values():
        layer.allocation_logits.data.normal_(0, 3)
    before = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    assert model.add_task_rows(1) == [3] and model.adapter_config.n_tasks == 4
    for layer in model.adapter_layers.values():
        w = normalise_rows(torch.sigmoid(layer.allocation_logits.view(4, layer.n_splits, layer.n_skills)))
        torch.testing.assert_close(w[3], w[:3].mean(0), atol=1e-6, rtol=0)
    model.eval()
    ids = torch.tensor([3, 0])
    model(input_ids=torch.tensor([[5, 6, 7], [5, 6, 7]]), task_ids=ids)  # the new id routes
    model.remove_task_rows(3)
    after = model.adapter_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---- few-shot adaptation ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen")
    out = {}
    for method in ("orchmoe", "poly", "molora", "lora"):
        cfg = TrainConfig(**{**TINY, "method": method, "output_dir": str(root / method)}, adapter={"n_skills": 2, "num_experts": 2})
        summary = train(cfg)
        out[method] = (root / method, summary)
    return out


def changed(before: dict, after: dict, heads: int = 1, skills: int = 2) -> set[str]:
    """Keys whose tensor moved; a Poly/MHR row appended after the trained rows counts as moved when it
    left its initialisation (the mean row)."""
    moved = set()
    for key, old in before.items():
        new = after[key]
        if old.dim() == 0:  # a scalar (the task router's temperature)
            if not torch.equal(old, new):
                moved.add(key)
        elif not torch.equal(old, new[: old.shape[0]]):
            moved.add(key)
        elif new.shape[0] > old.shape[0]:
            init = mean_allocation_logits(old.view(old.shape[0], heads, skills)).reshape(-1)
            moved |= {key} if not torch.equal(new[old.shape[0]], init) else set()
    return moved


@pytest.mark.parametrize("method", ["orchmoe", "poly", "molora"])
@pytest.mark.parametrize("params", ["routing", "all"])
def test_adapt_changes_only_the_claimed_parameters(runs, tmp_path, method, params):
    run_dir, summary = runs[method]
    task = summary["unseen_tasks"][0]
    result = adapt(run_dir, task, shots=2, params=params, steps=2, lr=0.05, output_dir=tmp_path / "new")
    before, after = load_file(str(run_dir / "adapter_model.safetensors")), load_file(str(tmp_path / "new" / "adapter_model.safetensors"))
    assert set(before) == set(after)
    claimed = set(result["trainable"])
    fitted = {k for k in before if k.startswith("task_router.feature_")}  # the router's data statistics: never trained
    routing = {k for k in before if k.startswith("task_router.") or k.endswith(("allocation_logits", "router"))} - fitted
    assert claimed == (routing if params == "routing" else set(before) - fitted)
    assert changed(before, after) == claimed  # every claimed tensor moved, nothing else did
    if method == "poly":  # a new row (id = number of trained tasks); the trained rows are untouched
        n = len(summary["tasks"])
        assert result["task_id"] == n and result["task_names"][n] == task
        for key in routing:
            assert after[key].shape[0] == n + 1 and torch.equal(after[key][:n], before[key])
            assert result["trainable"][key] == f"rows [{n}]"
        expected = sum(after[k][n].numel() for k in routing) + (0 if params == "routing" else
                                                              sum(before[k].numel() for k in before if k not in routing))
    else:
        expected = sum(before[k].numel() for k in claimed)
    assert result["trainable_params"] == expected and len(result["losses"]) == 2


def test_zero_shots_write_the_zero_shot_adapter(runs, tmp_path):
    run_dir, summary = runs["poly"]
    task = summary["unseen_tasks"][0]
    result = adapt(run_dir, task, shots=0, output_dir=tmp_path / "k0")
    assert result["steps"] == 0 and result["losses"] == []
    base = load_base_model("tiny-llama")
    zero_shot = evaluate_run(run_dir, split="unseen", max_new_tokens=4, base=base)
    assert zero_shot["task_rows"] == {t: "mean of trained rows" for t in summary["unseen_tasks"]}
    k0 = evaluate_run(tmp_path / "k0", split="unseen", max_new_tokens=4, base=load_base_model("tiny-llama"))
    assert list(k0["per_task"]) == [task] and k0["task_rows"] == {task: f"row {len(summary['tasks'])}"}
    read = lambda d, name: [json.loads(l) for l in (d / name).read_text().splitlines()]
    same = [r for r in read(run_dir, "predictions_unseen.jsonl") if r["task"] == task]
    assert [r["raw"] for r in read(tmp_path / "k0", "predictions_unseen.jsonl")] == [r["raw"] for r in same]


def test_adapt_errors(runs, tmp_path):
    run_dir, summary = runs["lora"]
    task = summary["unseen_tasks"][0]
    with pytest.raises(SkillMixError, match="method 'lora' has no routing parameters to adapt; use --params all"):
        adapt(run_dir, task, shots=1, output_dir=tmp_path / "a")
    with pytest.raises(SkillMixError, match=rf"--task '{summary['tasks'][0]}' is a training task of .*expected one of its unseen"):
        adapt(run_dir, summary["tasks"][0], shots=1, params="all")
    with pytest.raises(SkillMixError, match="--task 'task000_nope' is not in the data; expected one of the run's unseen tasks"):
        adapt(run_dir, "task000_nope", shots=1, params="all")
    pool = len([i for i in load_data(TrainConfig(**{**TINY, "output_dir": "x"})).unseen.train if i.task == task])
    with pytest.raises(SkillMixError, match=rf"--shots {pool + 1}: task '{task}' has {pool} instances outside its 2 "
                                            rf"evaluation instances; expected --shots <= {pool}"):
        adapt(run_dir, task, shots=pool + 1, params="all")
    with pytest.raises(SkillMixError, match="both a training task and an unseen task"):
        load_data(TrainConfig(**{**TINY, "tasks": [task], "unseen_tasks": [task], "output_dir": "x"}))
    with pytest.raises(SkillMixError, match="train option unseen_tasks=1.0: expected a fraction in"):
        TrainConfig(unseen_tasks=1.0)


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", "tiny-llama", "--tasks", "4", "--unseen-tasks", "0.25", "--n-test", "2",
              "--max-train-instances", "4", "--batch-size", "4", "--max-source-tokens", "64", "--max-target-tokens", "8",
              "--max-steps", "1", "--n-skills", "2"]
    assert main(["train", "--method", "orchmoe", *common, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "train_summary.json").read_text())
    (task,) = summary["unseen_tasks"]
    assert "task split: 3 seen / 1 unseen tasks" in printed and task in printed and task not in summary["tasks"]
    assert main(["eval", "--adapter", str(out), "--split", "unseen", "--max-new-tokens", "4"]) == 0
    assert list(json.loads((out / "metrics_unseen.json").read_text())["per_task"]) == [task]
    assert main(["adapt", "--adapter", str(out), "--task", task, "--shots", "2", "--params", "routing", "--max-steps", "1"]) == 0
    new = out / "adapt" / f"{task}-k2-routing"
    assert "trainable params" in capsys.readouterr().out
    assert main(["eval", "--adapter", str(new), "--split", "unseen", "--max-new-tokens", "4"]) == 0
    assert json.loads((new / "metrics_unseen.json").read_text())["num_examples"] == 2
    assert main(["inspect", str(out), "--split", "unseen"]) == 0  # routing of the unseen prompts
    inspected = json.loads((out / "inspect_unseen" / "inspect.json").read_text())
    assert inspected["tasks"] == [task] and len(inspected["task_router"]["mean_weights"][0]) == 4
    assert main(["adapt", "--adapter", str(out), "--task", task, "--shots", "2"]) == 2
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["adapt", "--adapter", str(out), "--task", task, "--shots", "999"]) == 2
    assert f"--shots 999: task '{task}' has" in capsys.readouterr().err
    assert main(["train", "--method", "lora", *common[:4], "--unseen-tasks", "task000_nope", "--output-dir",
                 str(tmp_path / "bad")]) == 2
    assert "unknown task 'task000_nope'" in capsys.readouterr().err
    # compare: seen test + unseen zero-shot columns, and the base model's row
    cmp = tmp_path / "cmp"
    assert main(["compare", "--methods", "poly", *common, "--max-new-tokens", "4", "--output-dir", str(cmp)]) == 0
    table = (cmp / "results.md").read_text()
    assert "| base | 0 |" in table and "unseen ROUGE-L" in table and "mean of the trained rows" in table
    results = json.loads((cmp / "results.json").read_text())
    assert "unseen_rougeL" in results["rows"][0] and results["unseen_tasks"] == [task]


def test_runs_started_before_the_unseen_options_still_resume(tmp_path):
    from skillmix.runs import prepare_output_dir

    cfg = TrainConfig(output_dir=str(tmp_path))
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("unseen_tasks", "unseen_categories")}
    (tmp_path / "train_config.json").write_text(json.dumps(old))
    assert prepare_output_dir(cfg, overwrite=False, resume=True) == tmp_path
    with pytest.raises(SkillMixError, match=r"options differ .*\(unseen_tasks\)"):
        prepare_output_dir(TrainConfig(output_dir=str(tmp_path), unseen_tasks=0.2), overwrite=False, resume=True)


def test_runs_without_a_hold_out_score_and_adapt_on_tasks_they_never_trained_on(tmp_path, capsys):
    """A seen-task run (no unseen split) evaluated zero-shot on named tasks and adapted to one of them:
    its own tasks and instance splits stay exactly the training ones; a training task is refused."""
    from skillmix.runs import with_unseen_tasks

    cfg = TrainConfig(**{**TINY, "unseen_tasks": None, "tasks": 3, "method": "poly", "output_dir": str(tmp_path / "run")},
                      adapter={"n_skills": 2})
    summary = train(cfg)
    seen = load_data(cfg)
    others = [t for t in sorted(load_data(TrainConfig(**{**TINY, "unseen_tasks": None, "tasks": 8, "output_dir": "x"})).tasks)
              if t not in seen.tasks][:2]
    pinned = load_data(with_unseen_tasks(cfg, others))
    assert pinned.task_names == seen.task_names and sorted(pinned.unseen.tasks) == others
    for part in ("train", "test"):
        assert [i.id for i in getattr(pinned, part)] == [i.id for i in getattr(seen, part)]
    with pytest.raises(SkillMixError, match=rf"--unseen-tasks: task '{summary['tasks'][0]}' is a training task of the run"):
        with_unseen_tasks(cfg, [summary["tasks"][0], others[0]])
    base = load_base_model("tiny-llama")
    metrics = evaluate_run(tmp_path / "run", split="unseen", unseen_tasks=others, max_new_tokens=4, base=base)
    assert sorted(metrics["per_task"]) == others and metrics["num_examples"] == 2 * len(others)
    assert metrics["task_rows"] == {t: "mean of trained rows" for t in others}
    with pytest.raises(SkillMixError, match="--unseen-tasks with --split test: expected --split unseen"):
        evaluate_run(tmp_path / "run", unseen_tasks=others, base=base)
    result = adapt(tmp_path / "run", others[0], shots=2, params="routing", steps=1, output_dir=tmp_path / "new")
    assert result["task_id"] == len(summary["tasks"]) and len(result["losses"]) == 1
    adapted = evaluate_run(tmp_path / "new", split="unseen", max_new_tokens=4, base=load_base_model("tiny-llama"))
    assert list(adapted["per_task"]) == [others[0]] and adapted["num_examples"] == 2
    with pytest.raises(SkillMixError, match=rf"--task '{summary['tasks'][0]}' is a training task of .*expected a task it "
                                            "never trained on"):
        adapt(tmp_path / "run", summary["tasks"][0], shots=1, params="all")
    assert main(["eval", "--adapter", str(tmp_path / "run"), "--split", "unseen", "--unseen-tasks", "0.5"]) == 2
    assert "--unseen-tasks 0.5 with --adapter: expected comma-separated task names" in capsys.readouterr().err
    assert main(["eval", "--adapter", str(tmp_path / "run"), "--split", "unseen", "--unseen-tasks", others[1],
                 "--max-new-tokens", "4", "--output-dir", str(tmp_path / "zs")]) == 0
    assert list(json.loads((tmp_path / "zs" / "metrics_unseen.json").read_text())["per_task"]) == [others[1]]
    train(TrainConfig(**{**cfg.to_dict(), "method": "molora", "output_dir": str(tmp_path / "molora")}))
    assert main(["inspect", str(tmp_path / "molora"), "--split", "unseen", "--unseen-tasks", ",".join(others)]) == 0
    inspected = json.loads((tmp_path / "molora" / "inspect_unseen" / "inspect.json").read_text())
    assert inspected["tasks"] == others and inspected["num_examples"] == 2 * len(others)
