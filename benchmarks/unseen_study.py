"""Unseen tasks (docs/results.md, section "Unseen tasks"): zero-shot and few-shot adaptation on tasks the
seen-task runs never trained on.

Reuses the 10-task runs of `superni_study.py` (stage main10): they trained on 10 tasks, so the other 79
tasks of the data are unseen to them. UNSEEN_FRACTION of those 79, stratified by first category (seed 0,
`skillmix.data.split_tasks`), are the unseen tasks; their first n_test (8) seeded instances are the
evaluation set, the rest the adaptation pool (never mixed). Stages, each resumable (finished files skipped):

- zeroshot: the base model and every method/seed run, zero-shot on the unseen tasks (`evaluate_run(...,
  unseen_tasks=...)`; Poly/MHR through the mean of the trained rows, METHODS.md OA-17);
- adapt: `skillmix adapt` of the seed-0 runs to ADAPT_TASKS unseen tasks from k in SHOTS instances,
  routing only or the whole adapter (k = 0 is the zero-shot score);
- inspect: OrchMoE's task router and skill mix on the unseen prompts next to the seen tasks'.

    python benchmarks/unseen_study.py [--stages zeroshot,adapt,inspect] [--seeds 0,1]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from skillmix.compare import mean_ci
from skillmix.data import list_tasks, read_categories, split_tasks
from skillmix.data.superni import first_category, resolve_data_dir
from skillmix.runs import TrainConfig, load_data, with_unseen_tasks
from superni_study import EVAL, METHODS, SEEN  # the seen-task runs this study reuses

UNSEEN_FRACTION = 0.125  # of the tasks the runs never trained on: 10 of 79
SEED = 0  # task choice
ADAPT = [("orchmoe", "routing"), ("orchmoe", "all"), ("poly", "routing"), ("poly", "all"), ("lora", "all")]
SHOTS = [8, 32]
ADAPT_TASKS = 2  # the first unseen tasks of different categories
ADAPT_STEPS = 10  # optimizer steps per adaptation (batch 8: one pass over k=8 per step, 80 examples for k=32)
KEY = ("rouge1", "rougeL", "rougeLsum", "exact_match")


def unseen_tasks(cfg: TrainConfig) -> tuple[list[str], dict[str, str]]:
    """(the unseen tasks, {task: first category}) for runs trained with `cfg`."""
    trained = load_data(cfg).task_names
    directory = resolve_data_dir(cfg.data_dir)
    categories = read_categories(directory, list_tasks(directory))
    pool = [t for t in sorted(categories) if t not in trained]
    _, unseen = split_tasks(categories, unseen=UNSEEN_FRACTION, seed=SEED, training=pool)
    return unseen, {t: first_category(categories[t]) for t in categories}


def source_overlap(cfg: TrainConfig, unseen: list[str]) -> dict[str, list[str]]:
    """{unseen task: training tasks with the same SuperNI `Source` dataset}."""
    directory = resolve_data_dir(cfg.data_dir)
    source = lambda t: set(json.loads((directory / f"{t}.json").read_text()).get("Source") or [])
    trained = {t: source(t) for t in load_data(cfg).task_names}
    return {u: sorted(t for t, s in trained.items() if s & source(u)) for u in unseen
            if any(s & source(u) for s in trained.values())}


def category_overlap(cfg: TrainConfig, unseen: list[str], category: dict[str, str]) -> dict[str, list[str]]:
    """{unseen task: training tasks of the same first category}."""
    trained = load_data(cfg).task_names
    return {u: [t for t in trained if category[t] == category[u]] for u in unseen
            if any(category[t] == category[u] for t in trained)}


def adapt_tasks(unseen: list[str], category: dict[str, str]) -> list[str]:
    chosen: list[str] = []
    for task in unseen:
        if len(chosen) < ADAPT_TASKS and category[task] not in {category[t] for t in chosen}:
            chosen.append(task)
    return chosen


def zeroshot(runs: Path, stage: Path, cfg: TrainConfig, unseen: list[str], seeds: list[int]) -> None:
    from skillmix.evaluate import evaluate_model, evaluate_run
    from skillmix.hub import load_base_model

    if not (stage / "base" / "metrics_unseen.json").is_file():
        model, tokenizer, kind = load_base_model(cfg.model)
        evaluate_model(model, tokenizer, kind, with_unseen_tasks(cfg, unseen), stage / "base", split="unseen", **EVAL)
    for seed in seeds:
        for method in METHODS:
            run_dir, out = runs / method / f"seed{seed}", stage / method / f"seed{seed}"
            if (run_dir / "metrics.json").is_file() and not (out / "metrics_unseen.json").is_file():
                t0 = time.time()
                evaluate_run(run_dir, split="unseen", unseen_tasks=unseen, output_dir=out, **EVAL)
                print(f"[unseen/zeroshot] {method} seed{seed}: {time.time() - t0:.0f} s", flush=True)


def adapt_all(runs: Path, stage: Path, tasks: list[str]) -> None:
    from skillmix.adapt import adapt
    from skillmix.evaluate import evaluate_run

    for k in SHOTS:
        for task in tasks:
            for method, params in ADAPT:
                out = stage / "adapt" / f"{method}-{params}" / f"{task}-k{k}"
                if (out / "metrics_unseen.json").is_file():
                    continue
                t0 = time.time()
                adapt(runs / method / "seed0", task, k, params=params, output_dir=out, steps=ADAPT_STEPS, overwrite=True)
                evaluate_run(out, split="unseen", **EVAL)
                for weights in out.glob("*.safetensors"):  # the adapted weights are not kept
                    weights.unlink()
                print(f"[unseen/adapt] {method} {params} {task} k={k}: {time.time() - t0:.0f} s", flush=True)


def inspect(runs: Path, stage: Path, unseen: list[str]) -> None:
    from skillmix.analysis import inspect_run

    run_dir = runs / "orchmoe" / "seed0"
    if not (stage / "inspect" / "seen" / "inspect.json").is_file():
        inspect_run(run_dir, output_dir=stage / "inspect" / "seen", split="test")
    if not (stage / "inspect" / "unseen" / "inspect.json").is_file():
        inspect_run(run_dir, output_dir=stage / "inspect" / "unseen", split="unseen", unseen_tasks=unseen)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def routing_summary(stage: Path, category: dict[str, str]) -> dict | None:
    """Per unseen task: mean task-router weights, skill mix (w @ sigmoid allocation, mean over layers), the
    seen task it routes most like; and within- vs across-category similarity of unseen tasks' routing."""
    seen_file, unseen_file = stage / "inspect" / "seen" / "inspect.json", stage / "inspect" / "unseen" / "inspect.json"
    if not (seen_file.is_file() and unseen_file.is_file()):
        return None
    seen, unseen = json.loads(seen_file.read_text()), json.loads(unseen_file.read_text())
    alloc = np.stack([np.asarray(a) for a in seen["allocation"].values()])  # [layers, N, S] (sigmoid, eval)
    w_seen = np.asarray(seen["task_router"]["mean_weights"])
    w_unseen = np.asarray(unseen["task_router"]["mean_weights"])
    tasks = {}
    for i, task in enumerate(unseen["tasks"]):
        sims = [_cos(w_unseen[i], w) for w in w_seen]
        j = int(np.argmax(sims))
        tasks[task] = {"category": category[task], "mean_w": w_unseen[i].round(4).tolist(),
                       "skill_mix": np.einsum("n,lns->ls", w_unseen[i], alloc).mean(0).round(4).tolist(),
                       "closest_seen_task": seen["tasks"][j], "closest_seen_category": category[seen["tasks"][j]],
                       "cosine": round(sims[j], 6)}
    pairs = {"same": [], "different": []}
    names = unseen["tasks"]
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            d = np.abs(w_unseen[a] - w_unseen[b]).sum() / 2  # total variation between the mean weights
            pairs["same" if category[names[a]] == category[names[b]] else "different"].append(float(d))
    return {"tasks": tasks, "nmi_unseen": unseen["task_router"]["nmi"], "nmi_seen": seen["task_router"]["nmi"],
            "tv_same_category": float(np.mean(pairs["same"])) if pairs["same"] else None,
            "tv_different_category": float(np.mean(pairs["different"])) if pairs["different"] else None,
            "w_range_unseen": [float(w_unseen.min()), float(w_unseen.max())]}


def collect(stage: Path, dest: Path, unseen: list[str], category: dict[str, str], seeds: list[int],
            tasks: list[str], overlap: tuple[dict, dict]) -> dict:
    """results.json / results.md of the unseen study, and the small files copied into `dest`."""
    read = lambda p: json.loads(p.read_text())
    base = read(stage / "base" / "metrics_unseen.json") if (stage / "base" / "metrics_unseen.json").is_file() else None
    zero = {}
    for method in METHODS:
        runs = [read(f) for s in seeds if (f := stage / method / f"seed{s}" / "metrics_unseen.json").is_file()]
        if runs:
            row = {k: mean_ci([r[k] for r in runs]) for k in KEY}
            row["rougeL_macro"] = mean_ci([r["macro"]["rougeL"] for r in runs])
            row["seeds"] = len(runs)
            row["per_task_rougeL"] = {t: float(np.mean([r["per_task"][t]["rougeL"] for r in runs])) for t in unseen}
            row["per_seed_rougeL"] = [r["rougeL"] for r in runs]
            if base:
                wins = [row["per_task_rougeL"][t] - base["per_task"][t]["rougeL"] for t in unseen]
                row["tasks_vs_base"] = {"win": sum(d > 1e-9 for d in wins), "tie": sum(abs(d) <= 1e-9 for d in wins),
                                        "loss": sum(d < -1e-9 for d in wins)}
            if "task_rows" in runs[0]:
                row["task_rows"] = sorted(set(runs[0]["task_rows"].values()))
            zero[method] = row
    adapt_rows = []
    for method, params in ADAPT:
        for task in tasks:
            k0 = stage / method / "seed0" / "metrics_unseen.json"
            if k0.is_file():
                m = read(k0)["per_task"][task]
                adapt_rows.append({"method": method, "params": params, "task": task, "k": 0, "rougeL": m["rougeL"],
                                   "exact_match": m["exact_match"], "trainable_params": 0, "adapt_wall_s": 0.0})
            for k in SHOTS:
                out = stage / "adapt" / f"{method}-{params}" / f"{task}-k{k}"
                if (out / "metrics_unseen.json").is_file():
                    m, s = read(out / "metrics_unseen.json"), read(out / "adapt_summary.json")
                    adapt_rows.append({"method": method, "params": params, "task": task, "k": k, "rougeL": m["rougeL"],
                                       "exact_match": m["exact_match"], "trainable_params": s["trainable_params"],
                                       "adapt_wall_s": s["adapt_wall_s"], "final_loss": s["final_loss"], "lr": s["lr"],
                                       "steps": s["steps"], "batch_size": s["batch_size"]})
    results = {"unseen_tasks": {t: category[t] for t in unseen}, "selection": f"split_tasks(fraction {UNSEEN_FRACTION} of "
               f"the tasks the runs never trained on, stratified by first category, seed {SEED})",
               "source_overlap": overlap[0], "category_overlap": overlap[1], "seeds": seeds, "eval": EVAL, "base": None if base is None else {
                   **{k: base[k] for k in KEY}, "rougeL_macro": base["macro"]["rougeL"],
                   "per_task_rougeL": {t: base["per_task"][t]["rougeL"] for t in unseen}},
               "zeroshot": zero, "adapt_tasks": tasks, "adapt_steps": ADAPT_STEPS, "adapt": adapt_rows,
               "routing": routing_summary(stage, category)}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for path in stage.rglob("*"):
        if path.is_file() and (path.suffix in (".json", ".png") or path.name.startswith("predictions")):
            target = dest / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="zeroshot,adapt,inspect")
    parser.add_argument("--runs-dir", default="runs/study/main10/all", help="the main10 runs (METHOD/seedK)")
    parser.add_argument("--out-dir", default="runs/study/unseen")
    parser.add_argument("--results-dir", default="results/unseen")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    runs, stage, seeds = Path(args.runs_dir), Path(args.out_dir), [int(s) for s in args.seeds.split(",")]
    cfg = TrainConfig(**SEEN, output_dir=str(stage))
    unseen, category = unseen_tasks(cfg)
    tasks = adapt_tasks(unseen, category)
    overlap = source_overlap(cfg, unseen), category_overlap(cfg, unseen, category)
    print(f"unseen tasks ({len(unseen)}): " + ", ".join(f"{t} [{category[t]}]" for t in unseen), flush=True)
    for name in [s for s in args.stages.split(",") if s]:
        t0 = time.time()
        if name == "zeroshot":
            zeroshot(runs, stage, cfg, unseen, seeds)
        elif name == "adapt":
            adapt_all(runs, stage, tasks)
        elif name == "inspect":
            inspect(runs, stage, unseen)
        elif name != "collect":
            raise SystemExit(f"unknown stage {name!r}")
        print(f"[unseen/{name}] done in {time.time() - t0:.0f} s", flush=True)
        collect(stage, Path(args.results_dir), unseen, category, seeds, tasks, overlap)
    collect(stage, Path(args.results_dir), unseen, category, seeds, tasks, overlap)


if __name__ == "__main__":
    main()
