"""Train and evaluate several methods at a matched trainable-parameter budget over seeds; tabulate and plot.

Resumable: every (method, seed) run lives in OUT/<method>/seed<k>; finished runs (metrics.json present)
are skipped, a partial run continues from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from .config import SkillMixConfig
from .errors import SkillMixError
from .io import atomic_write_text
from .model import count_parameters
from .train import CHECKPOINT, RUN_CONFIG, SUMMARY, TrainConfig, train

METRIC_KEYS = ("rouge1", "rougeL", "rougeLsum", "exact_match")
# Two-sided 95% Student-t quantiles by degrees of freedom (1.96 beyond 30).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t confidence interval (0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    df = len(values) - 1
    t = next((T95[k] for k in sorted(T95) if k >= df), 1.96)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def match_budget(base_model, config: SkillMixConfig, budget: int, max_rank: int = 256) -> tuple[SkillMixConfig, int]:
    """The config with the rank r (all other fields fixed) whose trainable count is closest to `budget`."""
    best = None
    for r in range(1, max_rank + 1):
        fields = {**dataclasses.asdict(config), "r": r}
        if config.method == "mode" and r % config.expert_rank:
            continue
        candidate = SkillMixConfig(**fields)
        count = count_parameters(base_model, candidate)
        if best is None or abs(count - budget) < abs(best[1] - budget):
            best = (candidate, count)
        if count > budget:
            break
    if best is None or best[1] > 2 * budget or best[1] < budget / 2:
        smallest = count_parameters(base_model, SkillMixConfig(**{**dataclasses.asdict(config), "r": 1}))
        raise SkillMixError(f"--budget {budget:,d} is out of reach for method {config.method!r}: its closest "
                            f"configuration has {best[1] if best else smallest:,d} trainable parameters "
                            f"(rank 1 has {smallest:,d})")
    return best


def run_one(cfg: TrainConfig, eval_options: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume, or skip) one run and evaluate it; returns summary + metrics."""
    from .evaluate import METRICS, evaluate_run

    out = Path(cfg.output_dir)
    if not (out / METRICS).is_file():
        resume = (out / RUN_CONFIG).is_file()
        if not (out / SUMMARY).is_file():
            if resume and not (out / CHECKPOINT).is_dir():
                resume = False  # killed before the first checkpoint: start again
            train(cfg, overwrite=not resume, resume=resume)
        evaluate_run(out, **eval_options)
    return {"summary": json.loads((out / SUMMARY).read_text()), "metrics": json.loads((out / METRICS).read_text())}


def compare(template: TrainConfig, methods: list[str], seeds: list[int], output_dir: str | Path,
            budget: int | None = None, adapters: dict[str, dict] | None = None,
            eval_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every method × seed from `template`, then write results.json, results.md and results.png."""
    from .hub import load_base_model

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapters = adapters or {}
    base_model = load_base_model(template.model)[0]
    plans = {}
    for method in methods:
        fields = {**template.adapter, **adapters.get(method, {})}
        config = TrainConfig(**{**template.to_dict(), "method": method, "adapter": fields}).adapter_config(
            n_tasks=template.tasks if isinstance(template.tasks, int) else len(template.tasks))
        config, count = match_budget(base_model, config, budget) if budget else (config, count_parameters(base_model, config))
        fields = {k: v for k, v in dataclasses.asdict(config).items()
                  if k not in ("method", "n_tasks", "gumbel_temperature", "load_balancing_coef", "extra",
                               "base_model_name_or_path") and v != getattr(SkillMixConfig(method=method), k)}
        plans[method] = (fields, count)
        print(f"{method:10s} {count:>10,d} trainable params  config: {json.dumps(fields)}")
    del base_model

    runs: dict[str, list[dict]] = {}
    for method in methods:
        for seed in seeds:
            cfg = TrainConfig(**{**template.to_dict(), "method": method, "seed": seed, "adapter": plans[method][0],
                                 "output_dir": str(out / method / f"seed{seed}")})
            runs.setdefault(method, []).append(run_one(cfg, eval_options or {}))
    results = aggregate(runs, plans, budget, seeds)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_markdown(results))
    plot_results(results, out / "results.png")
    return results


def aggregate(runs: dict[str, list[dict]], plans: dict, budget: int | None, seeds: list[int]) -> dict[str, Any]:
    """Mean ± 95% CI over seeds per method, and per-task wins against LoRA (seed-averaged ROUGE-L)."""
    rows = []
    per_task: dict[str, dict[str, float]] = {}
    for method, method_runs in runs.items():
        row: dict[str, Any] = {"method": method, "trainable_params": plans[method][1], "config": plans[method][0],
                               "seeds": len(method_runs)}
        for key in METRIC_KEYS:
            row[key] = mean_ci([r["metrics"][key] for r in method_runs])
        row["rougeL_macro"] = mean_ci([r["metrics"]["macro"]["rougeL"] for r in method_runs])
        row["train_wall_s"] = mean_ci([r["summary"]["train_wall_s"] for r in method_runs])
        row["step_s"] = mean_ci([r["summary"]["median_step_s"] for r in method_runs])
        tasks = method_runs[0]["metrics"]["per_task"]
        per_task[method] = {t: statistics.fmean(r["metrics"]["per_task"][t]["rougeL"] for r in method_runs) for t in tasks}
        rows.append(row)
    if "lora" in per_task:
        for row in rows:
            ours, ref = per_task[row["method"]], per_task["lora"]
            row["wins_vs_lora"] = {"win": sum(ours[t] > ref[t] + 1e-9 for t in ref),
                                   "tie": sum(abs(ours[t] - ref[t]) <= 1e-9 for t in ref),
                                   "loss": sum(ours[t] < ref[t] - 1e-9 for t in ref)}
    return {"budget": budget, "seeds": seeds, "rows": rows, "per_task_rougeL": per_task}


def _fmt(value: tuple[float, float], digits: int = 2) -> str:
    mean, ci = value
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if ci else f"{mean:.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The comparison table in Markdown."""
    lines = [f"Budget: {results['budget'] or 'per-method defaults'}; seeds: {results['seeds']}; "
             "mean ± 95% CI (t) over seeds; micro averages over held-out instances.", "",
             "| method | trainable params | ROUGE-1 | ROUGE-L | ROUGE-Lsum | EM | ROUGE-L (macro) | tasks W/T/L vs LoRA | train wall (s) | step (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        wins = row.get("wins_vs_lora")
        wtl = f"{wins['win']}/{wins['tie']}/{wins['loss']}" if wins and row["method"] != "lora" else "–"
        lines.append(f"| {row['method']} | {row['trainable_params']:,d} | {_fmt(row['rouge1'])} | {_fmt(row['rougeL'])} | "
                     f"{_fmt(row['rougeLsum'])} | {_fmt(row['exact_match'])} | {_fmt(row['rougeL_macro'])} | {wtl} | "
                     f"{_fmt(row['train_wall_s'], 1)} | {_fmt(row['step_s'], 3)} |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: Path) -> None:
    """Bar chart of ROUGE-L and EM per method with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 3, 3.5))
    width = 0.38
    for k, (key, label) in enumerate((("rougeL", "ROUGE-L"), ("exact_match", "EM"))):
        xs = [i + (k - 0.5) * width for i in range(len(rows))]
        ax.bar(xs, [r[key][0] for r in rows], width, yerr=[r[key][1] for r in rows], capsize=3, label=label)
    ax.set_xticks(range(len(rows)), names)
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"held-out instances, {len(results['seeds'])} seed(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
