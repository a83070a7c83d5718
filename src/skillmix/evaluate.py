"""Batched greedy generation on held-out SuperNI instances, scored with the official metrics."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import Collator, model_inputs
from .errors import SkillMixError
from .io import atomic_write_text
from .metrics import superni_metrics
from .model import SkillMixModel, load_model
from .runs import ADAPT_SUMMARY, TrainConfig, encode, load_data, output_files, read_run_config

SPLITS = ("test", "train", "unseen")


def clean_prediction(text: str) -> str:
    """The answer as scored: the first non-empty line, without an echoed leading 'Output:'."""
    text = text.strip()
    if text.lower().startswith("output:"):
        text = text[len("output:"):].strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@torch.no_grad()
def generate_predictions(model, tokenizer, kind: str, examples, batch_size: int = 8, max_new_tokens: int = 128,
                         uses_task_ids: bool = False, desc: str = "generate") -> list[dict[str, Any]]:
    """Greedy predictions for encoded examples, longest prompts first; returns rows in input order."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].prompt_ids))
    collate = Collator(tokenizer, kind, generate=True)
    device = next(model.parameters()).device
    rows: dict[int, dict[str, Any]] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        idx = order[start:start + batch_size]
        batch = collate([examples[i] for i in idx])
        inputs = {k: v.to(device) for k, v in model_inputs(batch, uses_task_ids).items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=collate.pad_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, inputs["input_ids"].shape[1]:] if kind == "causal" else out
        for i, ids, meta in zip(idx, new, batch["meta"]):
            raw = tokenizer.decode(ids, skip_special_tokens=True)
            rows[i] = {"task": meta["task"], "id": meta["id"], "prediction": clean_prediction(raw), "raw": raw,
                       "references": meta["references"]}
    return [rows[i] for i in range(len(examples))]


def score(rows: list[dict[str, Any]], data) -> dict[str, Any]:
    """superni_metrics over prediction rows, with per-task, per-category and macro breakdowns."""
    return superni_metrics([r["prediction"] for r in rows], [r["references"] for r in rows],
                           tasks=[r["task"] for r in rows],
                           categories=[data.tasks[r["task"]].categories or ["(none)"] for r in rows])


def evaluate_run(run_dir: str | Path, split: str = "test", batch_size: int = 8, max_new_tokens: int = 128,
                 output_dir: str | Path | None = None, base=None, limit: int | None = None,
                 unseen_tasks: list[str] | None = None) -> dict[str, Any]:
    """Evaluate the adapter in `run_dir` (a `skillmix train` or `skillmix adapt` output) on its held-out split.

    split="unseen": zero-shot on the evaluation instances of the run's unseen tasks, or, for an adapted
    directory (`adapt_summary.json` present), on the evaluation instances of its adapted task only.
    `unseen_tasks` (names) replaces the run's unseen tasks by these tasks, which it must never have trained
    on: any trained run, also one trained without a hold-out, can be scored zero-shot on new tasks.
    """
    from .hub import load_base_model

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, split, unseen_tasks)
    tasks = None
    if split == "unseen" and (run_dir / ADAPT_SUMMARY).is_file():
        tasks = [json.loads((run_dir / ADAPT_SUMMARY).read_text())["task"]]
    base_model, tokenizer, kind = base if base is not None else load_base_model(cfg.model)
    model = load_model(base_model, run_dir)
    return evaluate_model(model, tokenizer, kind, cfg, output_dir or run_dir, split, batch_size, max_new_tokens, limit,
                          tasks=tasks)


def unseen_task_ids(model, task_names: list[str]) -> tuple[dict[str, int], int | None]:
    """Poly/MHR task ids for (unseen) tasks: the task's own row when the adapter has one (an adapted
    adapter lists it in `extra["task_names"]`), else a mean row (METHODS.md OA-17) appended to the
    model in place; returns ({task: id}, the number of rows before appending, or None)."""
    known = list(model.adapter_config.extra.get("task_names") or [])[: model.adapter_config.n_tasks]
    ids = {t: known.index(t) for t in task_names if t in known}
    restore = None
    if len(ids) < len(task_names):
        restore = model.adapter_config.n_tasks
        mean_id = model.add_task_rows(1, init="mean")[0]
        ids.update({t: mean_id for t in task_names if t not in ids})
    return ids, restore


def evaluate_model(model, tokenizer, kind: str, cfg: TrainConfig, output_dir: str | Path, split: str = "test",
                   batch_size: int = 8, max_new_tokens: int = 128, limit: int | None = None,
                   tasks: list[str] | None = None) -> dict[str, Any]:
    """Generate on `cfg`'s split with `model` (a SkillMixModel or a plain base model) and write
    predictions + metrics into `output_dir` (file names: `output_files(split)`).

    split="unseen" scores the evaluation instances of the unseen tasks (`tasks`: only these); Poly/MHR
    route a task without a row of its own through the mean of the trained rows (a row appended for the
    call and removed afterwards).
    """
    if split not in SPLITS:
        raise SkillMixError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    data = load_data(cfg)
    if split == "unseen":
        if data.unseen is None:
            raise SkillMixError("--split unseen: this run holds no unseen tasks; expected a run trained with "
                                "--unseen-tasks FRACTION|NAMES or --unseen-categories NAMES")
        data = data.unseen
        if tasks is not None:
            missing = sorted(set(tasks) - set(data.tasks))
            if missing:
                raise SkillMixError(f"unseen task {missing[0]!r} is not among the run's unseen tasks; expected one of: "
                                    + ", ".join(data.task_names))
    examples, truncation = encode(cfg, data, "test" if split == "unseen" else split, tokenizer, kind)
    if tasks is not None:
        examples = [ex for ex in examples if ex.task in tasks]
    examples = examples[:limit] if limit else examples
    uses_task_ids = isinstance(model, SkillMixModel) and model.adapter_config.uses_task_ids
    restore = None
    routing_note = None
    if uses_task_ids and split == "unseen":
        ids, restore = unseen_task_ids(model, sorted({ex.task for ex in examples}))
        examples = [dataclasses.replace(ex, task_id=ids[ex.task]) for ex in examples]
        routing_note = {t: ("mean of trained rows" if restore is not None and i >= restore else f"row {i}")
                        for t, i in sorted(ids.items())}
    t_start = time.perf_counter()
    try:
        rows = generate_predictions(model, tokenizer, kind, examples, batch_size, max_new_tokens, uses_task_ids,
                                    desc=f"eval {cfg.method if isinstance(model, SkillMixModel) else 'base'}")
    finally:
        if restore is not None:
            model.remove_task_rows(restore)
    metrics = score(rows, data)
    metrics.update({"split": split, "num_examples": len(rows), "max_new_tokens": max_new_tokens,
                    "truncated_prompts": truncation.sources_truncated,
                    "generate_wall_s": round(time.perf_counter() - t_start, 2)})
    if routing_note:
        metrics["task_rows"] = routing_note  # Poly/MHR: which allocation row routed each unseen task
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions_file, metrics_file = output_files(split)
    atomic_write_text(out / predictions_file, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / metrics_file, json.dumps(metrics, indent=2) + "\n")
    return metrics
