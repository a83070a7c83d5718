"""Batched greedy generation on held-out SuperNI instances, scored with the official metrics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import Collator, model_inputs
from .errors import SkillMixError
from .io import atomic_write_text
from .metrics import superni_metrics
from .model import SkillMixModel, load_model
from .train import RUN_CONFIG, TrainConfig, encode, load_data

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


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
                 output_dir: str | Path | None = None, base=None, limit: int | None = None) -> dict[str, Any]:
    """Evaluate the adapter in `run_dir` (a `skillmix train` output) on its own held-out split."""
    from .hub import load_base_model

    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).is_file():
        raise SkillMixError(f"--adapter {run_dir}: no {RUN_CONFIG}; expected the output directory of 'skillmix train'")
    cfg = TrainConfig.from_dict(json.loads((run_dir / RUN_CONFIG).read_text()), source=str(run_dir / RUN_CONFIG))
    base_model, tokenizer, kind = base if base is not None else load_base_model(cfg.model)
    model = load_model(base_model, run_dir)
    return evaluate_model(model, tokenizer, kind, cfg, output_dir or run_dir, split, batch_size, max_new_tokens, limit)


def evaluate_model(model, tokenizer, kind: str, cfg: TrainConfig, output_dir: str | Path, split: str = "test",
                   batch_size: int = 8, max_new_tokens: int = 128, limit: int | None = None) -> dict[str, Any]:
    """Generate on `cfg`'s split with `model` (a SkillMixModel or a plain base model) and write
    predictions.jsonl + metrics.json into `output_dir`."""
    if split not in ("train", "test"):
        raise SkillMixError(f"--split must be 'train' or 'test', got {split!r}")
    data = load_data(cfg)
    examples, truncation = encode(cfg, data, split, tokenizer, kind)
    examples = examples[:limit] if limit else examples
    uses_task_ids = isinstance(model, SkillMixModel) and model.adapter_config.uses_task_ids
    rows = generate_predictions(model, tokenizer, kind, examples, batch_size, max_new_tokens, uses_task_ids,
                                desc=f"eval {cfg.method if isinstance(model, SkillMixModel) else 'base'}")
    metrics = score(rows, data)
    metrics.update({"split": split, "num_examples": len(rows), "max_new_tokens": max_new_tokens,
                    "truncated_prompts": truncation.sources_truncated})
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / METRICS, json.dumps(metrics, indent=2) + "\n")
    return metrics
