"""skillmix.analysis: clustering metrics against hand-computed values, and inspect_run on tiny trained runs."""
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from skillmix.analysis import confusion, inspect_run, nmi, purity
from skillmix.runs import TrainConfig, load_data
from skillmix.train import train


# ---- metrics -------------------------------------------------------------------------------------------
def test_confusion_counts_pairs_with_fixed_axes():
    counts = confusion([0, 0, 1, 2, 2, 2], [1, 1, 0, 1, 3, 3], n_true=3, n_pred=5)
    assert counts.tolist() == [[0, 2, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 2, 0]]
    assert confusion([1, 0], [0, 2]).shape == (2, 3)


def test_perfect_clustering_up_to_relabelling():
    true, pred = ["a", "a", "b", "b", "c"], [5, 5, 3, 3, 9]
    assert nmi(true, pred) == pytest.approx(1.0)
    assert purity(true, pred) == 1.0


def test_independent_labelings():
    true, pred = [0, 0, 1, 1], [0, 1, 0, 1]
    assert nmi(true, pred) == pytest.approx(0.0)
    assert purity(true, pred) == 0.5


def test_hand_worked_example():
    # contingency [[2, 1, 0], [0, 1, 2]]: MI = 2/3 ln 2, H(true) = ln 2, H(pred) = ln 3
    true, pred = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert nmi(true, pred) == pytest.approx((2 / 3 * math.log(2)) / ((math.log(2) + math.log(3)) / 2))
    assert nmi(pred, true) == pytest.approx(nmi(true, pred))
    assert purity(true, pred) == pytest.approx(5 / 6)


def test_degenerate_clusterings():
    assert nmi([0, 0, 0], [1, 1, 1]) == 1.0  # one cluster each
    assert nmi([0, 1, 2, 2], [0, 0, 0, 0]) == 0.0  # everything in one cluster
    assert purity([0, 1, 2, 2], [0, 0, 0, 0]) == 0.5


# ---- inspect_run on tiny runs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Factory method -> directory of a 1-step tiny-llama run on 3 tasks (trained once per module)."""
    runs = {}

    def make(method: str) -> Path:
        if method not in runs:
            out = tmp_path_factory.mktemp(method)
            train(TrainConfig(method=method, model="tiny-llama", output_dir=str(out), tasks=3, n_test=2,
                              max_train_instances=4, batch_size=4, max_source_tokens=128, max_target_tokens=16,
                              max_steps=1))
            runs[method] = out
        return runs[method]

    return make


def _check_written(summary: dict, names: list[str]) -> dict:
    files = [Path(f) for f in summary["files"]]
    assert sorted(f.name for f in files) == sorted(names + ["inspect.json"])
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    saved = json.loads(next(f for f in files if f.name == "inspect.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    return saved


def test_inspect_orchmoe(tiny_run):
    run = tiny_run("orchmoe")
    summary = _check_written(inspect_run(run), ["allocation.png", "task_router.png", "router_nmi.png"])
    assert Path(summary["files"][0]).parent == run / "inspect"
    probe = summary["probe"]  # the probe before training and at the last step
    assert probe["step"] == [0, 1] and all(0.0 <= v <= 1.0 for v in probe["probe_nmi"] + probe["probe_purity"])
    cfg = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))
    per_task = Counter(inst.task for inst in load_data(cfg).train)
    assert summary["num_examples"] == sum(per_task.values())
    router = summary["task_router"]
    counts = np.array(router["confusion"])  # [n_tasks, N]
    assert counts.shape == (3, 4)
    assert counts.sum(1).tolist() == [per_task[t] for t in summary["tasks"]]
    assert 0.0 <= router["nmi"] <= 1.0 and 1 / 3 <= router["purity"] <= 1.0
    assert np.allclose(np.array(router["mean_weights"]).sum(1), 1.0, atol=1e-5)
    assert len(summary["allocation"]) == 4  # q_proj, v_proj in 2 layers
    for alloc in summary["allocation"].values():
        assert np.array(alloc).shape == (4, 4) and 0 < np.min(alloc) and np.max(alloc) < 1


def test_inspect_molora(tiny_run, tmp_path):
    summary = _check_written(inspect_run(tiny_run("molora"), output_dir=tmp_path / "out", max_examples=4),
                             ["utilisation.png", "utilisation_per_task.png"])
    assert Path(summary["files"][0]).parent == tmp_path / "out"
    assert len(summary["utilisation"]) == 4 and min(summary["tokens"].values()) > 0
    for name, util in summary["utilisation"].items():
        assert len(util) == 4 and sum(util) == pytest.approx(1.0, abs=1e-5)  # soft routing: on the simplex
        assert 0.0 <= summary["balance_entropy"][name] <= 1.0 + 1e-6
        assert 0.0 <= summary["token_entropy"][name] <= summary["balance_entropy"][name] + 1e-6
    assert set(summary["per_task_utilisation"]) == set(summary["tasks"])


def test_inspect_mode_subset(tiny_run, tmp_path):
    summary = _check_written(inspect_run(tiny_run("mode"), output_dir=tmp_path, max_examples=4),
                             ["utilisation.png", "utilisation_per_task.png", "utilisation_groups.png"])
    assert summary["num_examples"] == 4
    for name, groups in summary["group_utilisation"].items():
        groups = np.array(groups)  # [G, m]: r=8 rank-1 groups of 4 experts
        assert groups.shape == (8, 4) and np.allclose(groups.sum(1), 1.0, atol=1e-5)
        assert np.allclose(summary["utilisation"][name], groups.mean(0))


def test_inspect_lora_writes_only_summary(tiny_run):
    summary = _check_written(inspect_run(tiny_run("lora")), [])
    assert summary["method"] == "lora" and "no routing" in summary["note"]
