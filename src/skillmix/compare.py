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
from .runs import (CHECKPOINT, METRICS, RUN_CONFIG, SUMMARY, TrainConfig, holds_out_tasks, load_data,
                   output_files, read_json)
from .train import train

METRIC_KEYS = ("rouge1", "rougeL", "rougeLsum", "exact_match")
REFERENCE = "lora"  # the row every other row is compared with, task by task (W/T/L)
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
        try:  # the method's own checks decide which ranks it accepts (MoDE: multiples of expert_rank)
            candidate = SkillMixConfig(**{**dataclasses.asdict(config), "r": r})
        except SkillMixError:
            continue
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
    """Train (or resume, or skip) one run and evaluate it (and zero-shot on its unseen tasks, if any);
    returns summary + metrics (+ metrics_unseen)."""
    from .evaluate import evaluate_run

    out = Path(cfg.output_dir)
    if not (out / METRICS).is_file():
        resume = (out / RUN_CONFIG).is_file()
        if not (out / SUMMARY).is_file():
            if resume and not (out / CHECKPOINT).is_dir():
                resume = False  # killed before the first checkpoint: start again
            train(cfg, overwrite=not resume, resume=resume)
        evaluate_run(out, **eval_options)
    result = {"summary": read_json(out, SUMMARY), "metrics": read_json(out, METRICS)}
    if holds_out_tasks(cfg):
        unseen_file = out / output_files("unseen")[1]
        if not unseen_file.is_file():
            evaluate_run(out, split="unseen", **eval_options)
        result["metrics_unseen"] = json.loads(unseen_file.read_text())
    return result


def base_zero_shot(template: TrainConfig, output_dir: Path, eval_options: dict[str, Any]) -> dict[str, Any]:
    """The base model without adapter on the unseen tasks (same prompts): OUT/base/metrics_unseen.json."""
    from .evaluate import evaluate_model
    from .hub import load_base_model

    path = output_dir / output_files("unseen")[1]
    if not path.is_file():
        model, tokenizer, kind = load_base_model(template.model)
        evaluate_model(model, tokenizer, kind, template, output_dir, split="unseen", **eval_options)
    return json.loads(path.read_text())


def compare(template: TrainConfig, methods: list[str], seeds: list[int], output_dir: str | Path,
            budget: int | None = None, adapters: dict[str, dict] | None = None,
            eval_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every method × seed from `template`, then write results.json, results.md and results.png."""
    from .hub import load_base_model

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapters = adapters or {}
    base_model = load_base_model(template.model)[0]
    n_tasks = template.tasks if isinstance(template.tasks, int) else len(template.tasks)
    unseen = holds_out_tasks(template)
    if unseen:  # Poly/MHR rows = seen tasks only
        split = load_data(template)
        n_tasks = len(split.task_names)
        print(split.task_split["text"])
        atomic_write_text(out / "task_split.json", json.dumps(split.task_split, indent=2) + "\n")
    plans = {}
    for method in methods:
        fields = {**template.adapter, **adapters.get(method, {})}
        config = TrainConfig(**{**template.to_dict(), "method": method, "adapter": fields}).adapter_config(
            n_tasks=n_tasks)
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
    if unseen:
        base = base_zero_shot(template, out / "base", eval_options or {})
        results["base_unseen"] = {key: base[key] for key in METRIC_KEYS}
        results["base_unseen"]["rougeL_macro"] = base["macro"]["rougeL"]
        results.setdefault("per_task_unseen_rougeL", {})["base"] = {t: v["rougeL"] for t, v in base["per_task"].items()}
        results["unseen_tasks"] = sorted(base["per_task"])
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", results_markdown(results))
    plot_results(results, out / "results.png")
    return results


def aggregate(runs: dict[str, list[dict]], plans: dict, budget: int | None, seeds: list[int],
              reference: str = REFERENCE) -> dict[str, Any]:
    """Mean ± 95% CI over seeds per method, and per-task wins against the `reference` row (seed-averaged ROUGE-L)."""
    rows = []
    per_task: dict[str, dict[str, float]] = {}
    per_task_unseen: dict[str, dict[str, float]] = {}
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
        if all("metrics_unseen" in r for r in method_runs):  # zero-shot on the unseen tasks
            for key in ("rougeL", "exact_match"):
                row[f"unseen_{key}"] = mean_ci([r["metrics_unseen"][key] for r in method_runs])
            row["unseen_rougeL_macro"] = mean_ci([r["metrics_unseen"]["macro"]["rougeL"] for r in method_runs])
            unseen = method_runs[0]["metrics_unseen"]["per_task"]
            per_task_unseen[method] = {t: statistics.fmean(r["metrics_unseen"]["per_task"][t]["rougeL"]
                                                           for r in method_runs) for t in unseen}
        rows.append(row)
    if reference in per_task:
        for row in rows:
            ours, ref = per_task[row["method"]], per_task[reference]
            row["wins_vs_lora"] = {"win": sum(ours[t] > ref[t] + 1e-9 for t in ref),
                                   "tie": sum(abs(ours[t] - ref[t]) <= 1e-9 for t in ref),
                                   "loss": sum(ours[t] < ref[t] - 1e-9 for t in ref)}
    results = {"budget": budget, "seeds": seeds, "rows": rows, "per_task_rougeL": per_task, "reference": reference}
    if per_task_unseen:
        results["per_task_unseen_rougeL"] = per_task_unseen
    return results


def _fmt(value: tuple[float, float], digits: int = 2) -> str:
    mean, ci = value
    return f"{mean:.{digits}f} ± {ci:.{digits}f}" if ci else f"{mean:.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The comparison table in Markdown (with zero-shot columns on the unseen tasks when there are some)."""
    unseen = "base_unseen" in results
    reference = results.get("reference", REFERENCE)
    lines = [f"Budget: {results['budget'] or 'per-method defaults'}; seeds: {results['seeds']}; "
             "mean ± 95% CI (t) over seeds; micro averages over held-out instances.", ""]
    if unseen:
        lines[-1:] = [f"Unseen tasks (zero-shot, never trained on): {', '.join(results['unseen_tasks'])}. Poly/MHR have "
                      "no row for a new task and use the mean of the trained rows' weights (METHODS.md OA-17); "
                      "OrchMoE and the token-routed methods route as on seen tasks; `base` = the model without "
                      "adapter, same prompts.", ""]
    extra = " unseen ROUGE-L | unseen EM | unseen ROUGE-L (macro) |" if unseen else ""
    lines += [f"| method | trainable params | ROUGE-1 | ROUGE-L | ROUGE-Lsum | EM | ROUGE-L (macro) | tasks W/T/L vs {reference} | "
              "train wall (s) | step (s) |" + extra,
              "|---|---|---|---|---|---|---|---|---|---|" + "---|" * (3 if unseen else 0)]
    if unseen:
        base = results["base_unseen"]
        lines.append("| base | 0 |" + " – |" * 8 + f" {base['rougeL']:.2f} | {base['exact_match']:.2f} | "
                     f"{base['rougeL_macro']:.2f} |")
    for row in results["rows"]:
        wins = row.get("wins_vs_lora")
        wtl = f"{wins['win']}/{wins['tie']}/{wins['loss']}" if wins and row["method"] != reference else "–"
        cells = (f" {_fmt(row['unseen_rougeL'])} | {_fmt(row['unseen_exact_match'])} | {_fmt(row['unseen_rougeL_macro'])} |"
                 if unseen and "unseen_rougeL" in row else " – | – | – |" if unseen else "")
        lines.append(f"| {row['method']} | {row['trainable_params']:,d} | {_fmt(row['rouge1'])} | {_fmt(row['rougeL'])} | "
                     f"{_fmt(row['rougeLsum'])} | {_fmt(row['exact_match'])} | {_fmt(row['rougeL_macro'])} | {wtl} | "
                     f"{_fmt(row['train_wall_s'], 1)} | {_fmt(row['step_s'], 3)} |" + cells)
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: Path) -> None:
    """Bar chart of ROUGE-L and EM per method with 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = [r["method"] for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 3, 3.5))
    series = [("rougeL", "ROUGE-L"), ("exact_match", "EM")]
    if all("unseen_rougeL" in r for r in rows):
        series.append(("unseen_rougeL", "unseen ROUGE-L (zero-shot)"))
    width = 0.8 / len(series)
    for k, (key, label) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [r[key][0] for r in rows], width, yerr=[r[key][1] for r in rows], capsize=3, label=label)
    ax.set_xticks(range(len(rows)), names)
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"held-out instances, {len(results['seeds'])} seed(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
