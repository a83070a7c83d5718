"""Does OrchMoE's task router separate the tasks? The first version against the data-dependent router, on the
study's 10-task setting (SmolLM2-135M-Instruct, every training instance, prompts <= 256 tokens).

Stages (resumable; finished runs are skipped, a killed run resumes from its checkpoint):
  init   the task router at step 0, fitted on 90% of the training prompts and probed on the other 10%
         (held-out *training* instances: the test instances are never looked at for a choice): NMI and purity
         of argmax w against the true task, for N = 4 and 10, first version vs data-dependent router
  train  one epoch of OrchMoE (budget 460,800) per variant, probe NMI every 5 steps, then ROUGE-L on the
         test instances, and the base model's floor on the same instances

    python benchmarks/router_study.py [--stages init,train] [--runs runs/routers] [--results results/routers]
    python benchmarks/router_study.py --report     # docs/routers.md and docs/router_nmi.png from the results
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from skillmix import SkillMixConfig, get_model
from skillmix.compare import match_budget
from skillmix.data import Collator
from skillmix.metrics import nmi, purity
from skillmix.runs import INSPECT, METRICS, SUMMARY, TrainConfig, encode, load_data, read_json, read_metrics_log
from superni_study import BUDGET, EVAL, SEEN

ROOT = Path(__file__).resolve().parents[1]
SETTING = {**SEEN, "max_train_instances": None, "save_steps": 10, "probe_steps": 5}  # every training instance
FIRST = {"router_scoring": "dot", "allocation_init": "poly"}
VARIANTS = {  # name -> (method, adapter fields, train options)
    "first_version_N4": ("orchmoe", {"n_skills": 4, "n_abstract_tasks": 4, **FIRST}, {"router_init": "random"}),
    "new_N4": ("orchmoe", {"n_skills": 4, "n_abstract_tasks": 4}, {}),
    "new_N10": ("orchmoe", {"n_skills": 4, "n_abstract_tasks": 10}, {}),
    "molora": ("molora", {"num_experts": 4}, {}),  # do token routers leave uniform?
    "new_N4_router_lr1e-4": ("orchmoe", {"n_skills": 4, "n_abstract_tasks": 4}, {"router_lr": 1e-4}),
}
KEEP = ("train_config.json", SUMMARY, METRICS, "metrics.jsonl", "predictions.jsonl", "adapter_config.json")


def stage_init(results: Path) -> dict:
    """NMI/purity of the task router at step 0 on held-out training prompts."""
    from skillmix.hub import load_base_model

    cfg = TrainConfig(**SETTING, method="orchmoe", output_dir="unused")
    base, tokenizer, kind = load_base_model(cfg.model)
    data = load_data(cfg)
    examples, _ = encode(cfg, data, "train", tokenizer, kind)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    cut = int(0.9 * len(examples))
    fit, probe = [examples[i] for i in order[:cut]], [examples[i] for i in order[cut:]]
    collate = Collator(tokenizer, kind)

    def batches(rows):
        return [collate(rows[i:i + 32]) for i in range(0, len(rows), 32)]

    rows = []
    for n in (4, 10):
        for name, fields in (("first version", FIRST), ("data-dependent", {})):
            torch.manual_seed(0)
            model = get_model(base, SkillMixConfig(method="orchmoe", n_skills=4, r=2, n_abstract_tasks=n, **fields))
            model.fit_task_router(batches(fit), kmeans=True, seed=0)
            with torch.no_grad():
                w = torch.cat([model.compute_task_weights(b["input_ids"], b["attention_mask"], b["labels"])
                               for b in batches(probe)])
            true, assigned = [ex.task_id for ex in probe], w.argmax(-1).tolist()
            rows.append({"N": n, "router": name, "nmi": round(nmi(true, assigned), 3),
                         "purity": round(purity(true, assigned), 3),
                         "max_abs_w_minus_uniform": round(float((w - 1 / n).abs().max()), 5),
                         "fit_prompts": len(fit), "probe_prompts": len(probe)})
            print(rows[-1], flush=True)
            base = _unwrap(model)  # the plain base again, for the next variant
    out = {"rows": rows, "tasks": data.task_names}
    results.mkdir(parents=True, exist_ok=True)
    (results / "init.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def _unwrap(model) -> torch.nn.Module:
    """The base model with the adapter layers taken out again (their base layers put back)."""
    for name, layer in model.adapter_layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.base_model.get_submodule(parent_name) if parent_name else model.base_model
        setattr(parent, child, layer.base_layer)
    return model.base_model


def stage_train(runs: Path, results: Path) -> None:
    from skillmix.analysis import inspect_run
    from skillmix.evaluate import evaluate_model, evaluate_run
    from skillmix.hub import load_base_model
    from skillmix.train import train

    base_out = runs / "base"
    if not (base_out / METRICS).is_file():
        model, tokenizer, kind = load_base_model(SETTING["model"])
        evaluate_model(model, tokenizer, kind, TrainConfig(**SETTING, output_dir=str(base_out)), base_out,
                       max_new_tokens=EVAL["max_new_tokens"], batch_size=EVAL["batch_size"])
    _keep(base_out, results / "base")
    base_model = load_base_model(SETTING["model"])[0]
    for name, (method, fields, options) in VARIANTS.items():
        out = runs / name
        cfg0 = TrainConfig(**SETTING, **options, method=method, adapter=fields, output_dir=str(out))
        config, count = match_budget(base_model, cfg0.adapter_config(), BUDGET)
        cfg = TrainConfig(**{**cfg0.to_dict(), "adapter": {**fields, "r": config.r}})
        t0 = time.time()
        if not (out / METRICS).is_file():
            if not (out / SUMMARY).is_file():
                resume = (out / "checkpoint").is_dir()
                train(cfg, overwrite=not resume, resume=resume)
            evaluate_run(out, max_new_tokens=EVAL["max_new_tokens"], batch_size=EVAL["batch_size"])
        if not (out / "inspect" / INSPECT).is_file():
            inspect_run(out, split="train", max_examples=160)
        (results / name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / "inspect" / INSPECT, results / name / INSPECT)
        print(f"[{name}] {count:,d} params, done in {time.time() - t0:.0f} s", flush=True)
        _keep(out, results / name)


def _keep(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)


def report(results: Path, doc: Path) -> None:
    """docs/routers.md (and docs/router_nmi.png) from the result files."""
    lines = ["# Does the task router find the tasks?", "", *report_lines(results, doc.parent, level="##")]
    doc.write_text("\n".join(lines) + "\n")
    print(f"wrote {doc}")


def report_lines(results: Path, docs: Path, level: str = "###") -> list[str]:
    """The router study's tables in Markdown, headings at `level`; writes docs/router_nmi.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["Generated by `python benchmarks/router_study.py --report` from `results/routers/` "
             "(runs: `python benchmarks/router_study.py`). Setting: the study's 10 SuperNI tasks (data seed 0), "
             "SmolLM2-135M-Instruct, every training instance not held out, prompts ≤ 256 tokens, targets ≤ 32.", ""]
    init = results / "init.json"
    if init.is_file():
        data = json.loads(init.read_text())
        first = data["rows"][0]
        lines += [f"{level} At step 0", "",
                  f"The router fitted on {first['fit_prompts']} training prompts, probed on the other "
                  f"{first['probe_prompts']} training prompts (NMI/purity of argmax w against the true task).", "",
                  "| N | router | NMI | purity | max abs(w − 1/N) |", "|---|---|---|---|---|"]
        lines += [f"| {r['N']} | {r['router']} | {r['nmi']:.3f} | {r['purity']:.3f} | {r['max_abs_w_minus_uniform']:.5f} |"
                  for r in data["rows"]]
        lines.append("")
    finished = [(name, results / name) for name in VARIANTS if (results / name / METRICS).is_file()]
    runs = [(name, path) for name, path in finished if VARIANTS[name][0] == "orchmoe"]
    token = [(name, path) for name, path in finished if VARIANTS[name][0] != "orchmoe"]
    if runs:
        base = read_json(results / "base", METRICS) if (results / "base" / METRICS).is_file() else None
        lines += [f"{level} One epoch of training", "",
                  "OrchMoE at the study's budget (460,800 trainable parameters, S = 4), lr 1e-3 with 10% warm-up, "
                  "batch 8, one epoch; probe = the first 16 training prompts of each task, every 5 steps. "
                  "ROUGE-L on the test instances (8 per task)." + (f" Base model without adapter: ROUGE-L "
                                                                  f"{base['rougeL']:.2f}." if base else ""), "",
                  "| variant | router lr | NMI step 0 | NMI max | NMI last | purity last | loss, last 10 steps | ROUGE-L | EM |",
                  "|---|---|---|---|---|---|---|---|---|"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, path in runs:
            probes = [r for r in read_metrics_log(path) if "probe_nmi" in r]
            metrics = read_json(path, METRICS)
            cfg = json.loads((path / "train_config.json").read_text())
            nmis = [r["probe_nmi"] for r in probes]
            lines.append(f"| {name} | {cfg['router_lr'] or cfg['lr']:g} | {nmis[0]:.3f} | {max(nmis):.3f} | {nmis[-1]:.3f} | "
                         f"{probes[-1]['probe_purity']:.3f} | {_tail_loss(path):.3f} | {metrics['rougeL']:.2f} | "
                         f"{metrics['exact_match']:.2f} |")
            ax.plot([r["step"] for r in probes], nmis, marker="o", markersize=3, label=name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("probe NMI (argmax w vs task)")
        ax.set_ylim(-0.03, 1.05)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(docs / "router_nmi.png", dpi=120)
        plt.close(fig)
        lines += ["", "![probe NMI against step](router_nmi.png)", ""]
        reading = []
        for name, path in runs:
            nmis = [r["probe_nmi"] for r in read_metrics_log(path) if "probe_nmi" in r]
            rouge = read_json(path, METRICS)["rougeL"]
            moved = "kept" if max(nmis) - min(nmis) < 0.01 else f"moved between {min(nmis):.3f} and {max(nmis):.3f}"
            reading.append(f"{name}: probe NMI {nmis[0]:.3f} at step 0, {moved}, {nmis[-1]:.3f} at the end"
                           + (f"; ROUGE-L {rouge - base['rougeL']:+.2f} against the base" if base else ""))
        for name, path in runs:
            adapter = json.loads((path / "train_config.json").read_text())["adapter"]
            if adapter.get("router_scoring") == "dot":
                n = adapter["n_abstract_tasks"]
                shares = [r["task_router_max_share"] for r in read_metrics_log(path) if "task_router_max_share" in r]
                reading.append(f"{name}'s batch-mean w never left 1/N by more than {max(abs(x - 1 / n) for x in shares):.1e} "
                               "over the epoch, so its argmax (and its NMI blips) is noise")
        lines += ["Reading (computed from the files): " + "; ".join(reading) + ". One seed and 80 test instances "
                  "each: differences between the variants under about 2 points are within the first pass's "
                  "seed-to-seed spread.", ""]
    synthetic = results / "synthetic.json"
    if synthetic.is_file():
        data = json.loads(synthetic.read_text())
        lines += [f"{level} A synthetic problem, step by step", "",
                  "`python benchmarks/router_synthetic.py`: 4 tasks, each a different permutation of the same 10 input "
                  "tokens, prompts = 4 task-marker tokens + the input, adapters on the first block's MLP of a tiny "
                  f"random Llama; LoRA r = 4 against OrchMoE N = S = 4, r = 1; lr 1e-2, batch 32, {data['steps']} steps.", "",
                  "| variant | loss (all prompts), first → last | probe NMI by step |", "|---|---|---|"]
        for name, history in data["runs"].items():
            nmis = " → ".join("–" if n is None else f"{n:.2f}" for _, _, n in history)
            lines.append(f"| {name} | {history[0][1]:.3f} → {history[-1][1]:.3f} | {nmis} |")
        lines.append("")
    if token:
        lines += [f"{level} Token routers", "",
                  "The same epoch for a token-routed method at the same budget. Token-router entropy = mean "
                  "H(p)/log E over the batch's positions and layers (1 = uniform); balance = H(mean p)/log E per "
                  "layer, averaged; task spread = mean over layers and experts of the range of an expert's mean "
                  "probability across tasks (`skillmix inspect` on 160 training prompts).", "",
                  "| method | entropy step 1 | entropy last | balance | task spread | loss, last 10 steps | ROUGE-L | EM |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, path in token:
            steps = [r for r in read_metrics_log(path) if "token_router_entropy" in r]
            metrics = read_json(path, METRICS)
            inspect = read_json(path, INSPECT) if (path / INSPECT).is_file() else {}
            balance = sum(inspect["balance_entropy"].values()) / len(inspect["balance_entropy"]) if inspect else float("nan")
            spread = float("nan")
            if inspect:
                per_task = inspect["per_task_utilisation"]  # task -> layer -> [E]
                layers = next(iter(per_task.values()))
                ranges = [max(per_task[t][layer][e] for t in per_task) - min(per_task[t][layer][e] for t in per_task)
                          for layer in layers for e in range(len(layers[layer]))]
                spread = sum(ranges) / len(ranges)
            lines.append(f"| {name} | {steps[0]['token_router_entropy']:.4f} | {steps[-1]['token_router_entropy']:.4f} | "
                         f"{balance:.4f} | {spread:.4f} | {_tail_loss(path):.3f} | {metrics['rougeL']:.2f} | "
                         f"{metrics['exact_match']:.2f} |")
        lines.append("")
    return lines


def _tail_loss(path: Path, steps: int = 10) -> float:
    """Mean training loss of the last `steps` logged steps (one batch's loss is noisy)."""
    losses = [r["loss"] for r in read_metrics_log(path) if "loss" in r][-steps:]
    return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="init,train")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "routers"))
    parser.add_argument("--results", default=str(ROOT / "results" / "routers"))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    results = Path(args.results)
    if args.report:
        report(results, ROOT / "docs" / "routers.md")
        return
    stages = args.stages.split(",")
    if "init" in stages:
        stage_init(results)
    if "train" in stages:
        stage_train(Path(args.runs), results)
    report(results, ROOT / "docs" / "routers.md")


if __name__ == "__main__":
    main()
