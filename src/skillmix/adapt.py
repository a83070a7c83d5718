"""Few-shot adaptation of a trained adapter to one unseen task (docs/unseen.md).

`adapt(run_dir, task, shots, params)` starts from the adapter of a run trained with unseen tasks held
out, fine-tunes it on the first `shots` instances of the task's adaptation pool (never its evaluation
instances) and writes a new adapter directory that `skillmix eval --adapter NEW --split unseen`
evaluates on that task. What is trained (`params`):

- "routing": only what routes. Poly/MHR: one new allocation row per layer (the task's own row, id =
  number of trained tasks), initialised to the mean of the trained rows (its zero-shot routing; MHR-z);
  OrchMoE: the task router (W_Q, keys E) and every layer's allocation logits Θ (everything that decides
  the skill mix of a prompt; the skills stay fixed); MoLoRA, MoLoRA-SD, MoDE: the token routers;
  LoRA has none.
- "all": every adapter parameter (Poly/MHR: the skills and the new row; the trained tasks' rows do not
  act on the new task and stay fixed).

shots=0 trains nothing and writes the zero-shot adapter (Poly/MHR: with the mean row as the task's row).
Other parameters are left bit-for-bit unchanged (frozen, or masked rows restored after every step).
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .batching import global_batches
from .data import Collator, MultiTaskData, list_tasks
from .errors import SkillMixError
from .io import atomic_write_text
from .model import SkillMixModel, load_model
from .runs import (ADAPT_SUMMARY, RUN_CONFIG, TrainConfig, encode, load_data, read_run_config,
                   with_unseen_tasks)
from .train import StepContext, make_accelerator, run_loop

PARAMS = ("routing", "all")
DEFAULT_STEPS = 30  # optimizer steps when shots > 0 (batches cycle over the k shots in seeded epochs)
ROUTING_LR_FACTOR = 10.0  # default lr: 10x the run's lr for params="routing", the run's lr for "all"


def few_shot_pool(cfg: TrainConfig, task: str, run_dir: Path | str = "the run") -> tuple[TrainConfig, MultiTaskData, list]:
    """(the run's config, its data, the task's adaptation pool in its seeded order), with one-line errors for a
    task that is a training task, not an unseen task of the run, or not in the data. A run trained without a
    hold-out takes `task` as its unseen task (`with_unseen_tasks`; the returned config says so)."""
    data = load_data(cfg)
    if data.unseen is None:  # a run trained without a hold-out: any task it never trained on
        if task in data.tasks:
            raise SkillMixError(f"--task {task!r} is a training task of {run_dir}; expected a task it never trained on")
        if task not in list_tasks(cfg.data_dir):
            raise SkillMixError(f"--task {task!r} is not in the data ({cfg.data_dir or 'default data dir'}); expected a "
                                "task it never trained on")
        cfg = with_unseen_tasks(cfg, [task], "--task")
        data = load_data(cfg)
    unseen = data.unseen.task_names
    if task in data.tasks:
        raise SkillMixError(f"--task {task!r} is a training task of {run_dir}; expected one of its unseen tasks: "
                            + ", ".join(unseen))
    if task not in data.unseen.tasks:
        known = task in list_tasks(cfg.data_dir)
        raise SkillMixError(f"--task {task!r} is {'not an unseen task of ' + str(run_dir) if known else 'not in the data'}"
                            f"; expected one of the run's unseen tasks: " + ", ".join(unseen))
    return cfg, data, [inst for inst in data.unseen.train if inst.task == task]


def trainable_masks(model: SkillMixModel, params: str, new_row: int | None = None) -> dict[str, torch.Tensor | None]:
    """{adapter_state_dict key: None (whole tensor trained) or a row mask [rows, 1] (only True rows)}.

    Per-task parameters (one row per task id: Poly/MHR's allocation logits) train only the new task's row.
    """
    if params not in PARAMS:
        raise SkillMixError(f"--params {params!r}: expected one of {', '.join(PARAMS)}")
    state = model.adapter_state_dict()
    keys = model.routing_parameter_names() if params == "routing" else [
        k for k, v in state.items() if isinstance(v, torch.nn.Parameter)]  # not the router's fitted statistics
    if not keys:
        raise SkillMixError(f"method {model.method!r} has no routing parameters to adapt; use --params all")
    per_task = set(model.per_task_parameter_names())
    masks: dict[str, torch.Tensor | None] = {}
    for key in keys:
        if key in per_task:
            row = torch.zeros(state[key].shape[0], 1, dtype=torch.bool, device=state[key].device)
            row[new_row] = True
            masks[key] = row
        else:
            masks[key] = None
    return masks


def count_trainable(model: SkillMixModel, masks: dict[str, torch.Tensor | None]) -> int:
    state = model.adapter_state_dict()
    return sum(state[k].numel() if m is None else int(m.sum()) * state[k].shape[1] for k, m in masks.items())


def adapt(run_dir: str | Path, task: str, shots: int, params: str = "routing", output_dir: str | Path | None = None,
          steps: int | None = None, lr: float | None = None, batch_size: int | None = None, seed: int = 0,
          overwrite: bool = False, base=None) -> dict[str, Any]:
    """Adapt the adapter in `run_dir` to unseen `task` from `shots` of its instances; returns the summary
    (also OUT/adapt_summary.json). OUT defaults to RUN/adapt/<task>-k<shots>-<params>.

    `base` = (model, tokenizer, kind) reuses a loaded base model (the adapter is injected into it in place).
    """
    from .hub import load_base_model

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if params not in PARAMS:
        raise SkillMixError(f"--params {params!r}: expected one of {', '.join(PARAMS)}")
    if not isinstance(shots, int) or shots < 0:
        raise SkillMixError(f"--shots {shots!r}: expected a non-negative integer")
    cfg, data, pool = few_shot_pool(cfg, task, run_dir)
    n_eval = sum(inst.task == task for inst in data.unseen.test)
    if shots > len(pool):
        raise SkillMixError(f"--shots {shots}: task {task!r} has {len(pool)} instances outside its {n_eval} evaluation "
                            f"instances; expected --shots <= {len(pool)}")
    steps = (0 if shots == 0 else DEFAULT_STEPS) if steps is None else steps
    if steps < 0 or (shots == 0 and steps):
        raise SkillMixError(f"--steps {steps}: expected a non-negative integer (0 with --shots 0)")
    lr = lr if lr is not None else cfg.lr * (ROUTING_LR_FACTOR if params == "routing" else 1.0)
    if not lr > 0:
        raise SkillMixError(f"--lr {lr}: expected a positive number")
    out = Path(output_dir) if output_dir is not None else run_dir / "adapt" / f"{task}-k{shots}-{params}"
    if out.resolve() == run_dir.resolve():
        raise SkillMixError(f"--output-dir {out}: expected a new directory, not the trained run itself")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SkillMixError(f"output directory {out} exists and is not empty; pass --overwrite")
        shutil.rmtree(out)

    base_model, tokenizer, kind = base if base is not None else load_base_model(cfg.model)
    model = load_model(base_model, run_dir, is_trainable=True)
    for p in model.adapter_state_dict().values():
        p.requires_grad_(False)
    extra = dict(model.adapter_config.extra)
    task_id = None
    if model.adapter_config.uses_task_ids:
        task_id = model.add_task_rows(1, init="mean")[0]
        extra["task_names"] = list(extra.get("task_names") or [])[:task_id] + [task]
    masks = trainable_masks(model, params, task_id)
    n_trainable = count_trainable(model, masks)

    # the k shots: the first k instances of the task's adaptation pool (seeded order; disjoint from evaluation)
    shot_data = MultiTaskData(tasks={task: data.unseen.tasks[task]}, train=pool[:shots], test=[])
    examples, _ = encode(cfg, shot_data, "train", tokenizer, kind)
    if task_id is not None:
        examples = [dataclasses.replace(ex, task_id=task_id) for ex in examples]
    log: list[dict[str, Any]] = []
    t_start = time.time()
    if steps:
        log = _train(model, cfg, masks, examples, steps, lr, batch_size or cfg.batch_size, seed, tokenizer, kind)
    wall = time.time() - t_start

    model.eval()
    for p in model.adapter_state_dict().values():
        p.requires_grad_(False)
    extra.update({"adapted_task": task, "adapted_from": str(run_dir), "shots": shots, "adapt_params": params})
    model.adapter_config.extra = extra
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    atomic_write_text(out / RUN_CONFIG, json.dumps({**cfg.to_dict(), "output_dir": str(out)}, indent=2) + "\n")
    summary = {
        "task": task, "shots": shots, "params": params, "method": cfg.method, "adapted_from": str(run_dir),
        "output_dir": str(out), "steps": steps, "lr": lr, "batch_size": min(batch_size or cfg.batch_size, max(shots, 1)),
        "seed": seed, "trainable_params": n_trainable,
        "trainable": {k: "all" if m is None else f"rows {m.flatten().nonzero().flatten().tolist()}" for k, m in masks.items()},
        "task_id": task_id, "task_names": extra.get("task_names"), "shot_ids": [inst.id for inst in pool[:shots]],
        "eval_instances": n_eval, "pool_instances": len(pool), "losses": [r["loss"] for r in log],
        "final_loss": log[-1]["loss"] if log else None, "adapt_wall_s": round(wall, 2),
    }
    atomic_write_text(out / ADAPT_SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def _train(model: SkillMixModel, cfg: TrainConfig, masks, examples, steps: int, lr: float, batch_size: int, seed: int,
           tokenizer, kind: str) -> list[dict[str, Any]]:
    """`steps` optimizer steps of the training loop (`train.run_loop`) on the masked parameters: AdamW without
    weight decay at a constant lr, the Gumbel temperature fixed at the run's last; frozen rows are restored
    after every step."""
    torch.manual_seed(seed)
    random.seed(seed)
    state = model.adapter_state_dict()
    params = []
    frozen_rows = {}
    for key, mask in masks.items():
        p = state[key]
        p.requires_grad_(True)
        params.append(p)
        if mask is not None:
            p.register_hook(lambda grad, m=mask: grad * m.to(grad.dtype))
            frozen_rows[key] = (p, mask, p.detach().clone())

    def restore_frozen_rows() -> None:
        with torch.no_grad():
            for p, mask, original in frozen_rows.values():
                p.copy_(torch.where(mask, p, original))

    bsz = min(batch_size, len(examples))
    temperature = cfg.gumbel_temperature_end if cfg.gumbel_temperature_end is not None else cfg.gumbel_temperature
    step_cfg = dataclasses.replace(cfg, lr=lr, batch_size=bsz, grad_accum=1, seed=seed, weight_decay=0.0,
                                   gumbel_temperature=temperature, gumbel_temperature_end=None, bf16=False)
    accelerator = make_accelerator(bf16=False)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    prepared, optimizer = accelerator.prepare(model, optimizer)
    epochs = math.ceil(steps * bsz / len(examples)) + 1
    plan = global_batches(len(examples), bsz, seed, epochs)[:steps]
    ctx = StepContext(step_cfg, prepared, accelerator.unwrap_model(prepared), optimizer, None, accelerator, examples,
                      Collator(tokenizer, kind), kind, steps)
    return run_loop(ctx, plan, after_step=restore_frozen_rows)
