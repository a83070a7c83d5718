"""The SuperNI study of docs/results.md: seen-task comparison, OrchMoE/MoDE ablations, larger setting.

Resumable: every run lives in RUNS/<stage>/<variant>/<method>/seed<k> (finished runs are skipped, a killed
run resumes from its checkpoint); after each stage the small result files (configs, summaries, metrics,
tables, plots; never weights) are copied into results/<stage>/ so they can be committed.

    python benchmarks/superni_study.py --stages main10,ablations,mode,large,lr [--runs-dir runs/study]
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from skillmix import METHODS
from skillmix.compare import compare
from skillmix.runs import TrainConfig
BUDGET = 460_800  # LoRA r=8 on q_proj, v_proj of SmolLM2-135M
# Sized for 2 CPU cores (~150-250 tokens/s training): prompts <= 256 tokens (Definition + 2 positive
# examples, the middle of longer prompts cut), 12 training instances per task, one epoch, lr 1e-3.
SEEN = dict(model="SmolLM2-135M-Instruct", tasks=10, data_seed=0, n_test=8, max_train_instances=12,
            max_source_tokens=256, max_target_tokens=32, batch_size=8, epochs=1, lr=1e-3, warmup_ratio=0.1,
            save_steps=5)
LARGE = {**SEEN, "tasks": 89, "n_test": 2, "max_train_instances": 2}  # 178 train prompts: 23 steps
EVAL = dict(max_new_tokens=32, batch_size=16)
ORCH_ABLATIONS = {  # variant -> adapter fields (method orchmoe, budget-matched through r)
    "N1": {"n_abstract_tasks": 1}, "N2": {"n_abstract_tasks": 2}, "N8": {"n_abstract_tasks": 8},
    "N16": {"n_abstract_tasks": 16}, "S2": {"n_skills": 2}, "S8": {"n_skills": 8},
    "no_task_router": {"task_router": "uniform"}, "no_skill_router": {"skill_router": "uniform"},
    "poly_mix": {"mix": "poly"},
}
MODE_VARIANTS = {  # MoDE m x p (experts per group x expert rank) against MoLoRA-SD, same budget
    "mode_m2_p1": ("mode", {"num_experts": 2, "expert_rank": 1}),
    "mode_m8_p1": ("mode", {"num_experts": 8, "expert_rank": 1}),
    "mode_m4_p2": ("mode", {"num_experts": 4, "expert_rank": 2}),
    "molora_sd_m8": ("molora_sd", {"num_experts": 8}),
}
LR_VARIANTS = {"lr4e-3": ["lora", "molora", "poly", "orchmoe"]}  # do the mixtures only need a larger step? (seed 0)
KEEP = ("train_config.json", "train_summary.json", "metrics.json", "metrics.jsonl", "predictions.jsonl", "adapter_config.json",
        "results.md", "results.json", "results.png", "inspect.json")


def run(stage: str, variant: str, methods: list[str], seeds: list[int], settings: dict, runs: Path,
        adapter: dict | None = None) -> dict:
    out = runs / stage / variant
    template = TrainConfig(**settings, output_dir=str(out), adapter=adapter or {})
    t0 = time.time()
    results = compare(template, methods, seeds, out, budget=BUDGET, eval_options=EVAL)
    print(f"[{stage}/{variant}] done in {time.time() - t0:.0f} s", flush=True)
    return results


def copy_small_files(runs: Path, stage: str, dest: Path) -> None:
    """Mirror every small result file of a stage into results/<stage> (no weights, no checkpoints)."""
    for path in (runs / stage).rglob("*"):
        finished = (path.parent / "metrics.json").is_file() or path.parent.name == "base" or path.parent.name.startswith("inspect") or \
            path.name.startswith("results")
        if path.is_file() and finished and (path.name in KEEP or path.suffix == ".png"):
            target = dest / stage / path.relative_to(runs / stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def base_floor(runs: Path, stage: str, settings: dict) -> None:
    """The base model without adapter on the stage's held-out instances, same prompts (RUNS/<stage>/base)."""
    from skillmix.evaluate import evaluate_model
    from skillmix.hub import load_base_model

    out = runs / stage / "base"
    if not (out / "metrics.json").is_file():
        model, tokenizer, kind = load_base_model(settings["model"])
        evaluate_model(model, tokenizer, kind, TrainConfig(**settings, output_dir=str(out)), out, split="test", **EVAL)


def inspect_orchmoe(runs: Path, stage: str) -> None:
    from skillmix.analysis import inspect_run

    for run_dir in sorted((runs / stage).glob("*/orchmoe/seed*")):
        if (run_dir / "metrics.json").is_file() and not (run_dir / "inspect" / "inspect.json").is_file():
            inspect_run(run_dir, split="test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="main10,ablations,mode,large,lr")
    parser.add_argument("--runs-dir", default="runs/study")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--collect", action="store_true", help="only copy finished runs' small files into results/")
    args = parser.parse_args()
    runs, dest = Path(args.runs_dir), Path(args.results_dir)
    if args.collect:
        for stage in args.stages.split(","):
            if (runs / stage).is_dir():
                copy_small_files(runs, stage, dest)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    for stage in args.stages.split(","):
        if stage == "main10":
            base_floor(runs, stage, SEEN)
            for k in range(1, len(seeds) + 1):  # all methods for seed 0 first, then add seeds
                run(stage, "all", METHODS, seeds[:k], SEEN, runs)
                copy_small_files(runs, stage, dest)
            inspect_orchmoe(runs, stage)
        elif stage == "ablations":
            for variant, fields in ORCH_ABLATIONS.items():
                run(stage, variant, ["orchmoe"], seeds[:1], SEEN, runs, adapter=fields)
                copy_small_files(runs, stage, dest)
        elif stage == "mode":
            for variant, (method, fields) in MODE_VARIANTS.items():
                run(stage, variant, [method], seeds[:1], SEEN, runs, adapter=fields)
                copy_small_files(runs, stage, dest)
        elif stage == "lr":
            for variant, methods in LR_VARIANTS.items():
                run(stage, variant, methods, seeds[:1], {**SEEN, "lr": float(variant[2:])}, runs)
                copy_small_files(runs, stage, dest)
            inspect_orchmoe(runs, stage)
        elif stage == "large":
            base_floor(runs, stage, LARGE)
            run(stage, "all", METHODS, seeds[:1], LARGE, runs)
            inspect_orchmoe(runs, stage)
        else:
            raise SystemExit(f"unknown stage {stage!r}")
        copy_small_files(runs, stage, dest)
    print(json.dumps({"stages": args.stages, "results": str(dest)}))


if __name__ == "__main__":
    main()
