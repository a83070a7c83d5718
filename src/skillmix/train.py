"""Multi-task training, as a recipe that reads top to bottom: config in, model built, loop, adapter out.

`train(cfg)`: Accelerate (one or several processes), the run directory, data, model, optimizer and
step plan, resume, then `run_loop`, which calls `train_step` once per optimizer step, logs, checkpoints
atomically every `save_steps`, and stops cleanly on Ctrl-C (checkpoint kept) or a non-finite loss.
What a run directory holds is in `runs`, which examples a step sees in `batching`, the loss in `loss`.
`skillmix adapt` reuses `run_loop` and `train_step` for few-shot adaptation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .batching import (choose_references, collated_batches, global_batches, micro_batch_shards,
                       target_token_count)
from .data import Collator, EncodedExample, model_inputs
from .errors import SkillMixError
from .io import atomic_write_text
from .loss import summed_lm_loss, target_tokens
from .metrics import nmi, purity, routing_statistics
from .model import SkillMixModel, get_model
from .runs import (CHECKPOINT, METRICS_LOG, SUMMARY, TrainConfig, encode, load_checkpoint, load_data,
                   prepare_output_dir, read_json, save_checkpoint)


@dataclass
class StepContext:
    """What an optimizer step needs: the options, the model (as Accelerate prepared it, and unwrapped),
    the optimizer and scheduler, the examples and how to batch them."""

    cfg: TrainConfig  # batch_size, grad_accum, seed, max_grad_norm, the Gumbel temperature schedule
    model: torch.nn.Module  # DDP-wrapped under several processes
    inner: SkillMixModel
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, or None for a constant lr
    accelerator: Any
    examples: list[EncodedExample]
    collate: Collator
    kind: str  # "causal" | "seq2seq"
    total_steps: int


def make_accelerator(bf16: bool):
    """A fresh Accelerator (a new run may change mixed precision; the process group stays); without a GPU,
    cpu=True lets Accelerate run several CPU processes (gloo) under torchrun / accelerate launch."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())


def train(cfg: TrainConfig, overwrite: bool = False, resume: bool = False, base=None) -> dict[str, Any]:
    """Train one adapter; returns the run summary (also written to OUT/train_summary.json).

    `base` = (model, tokenizer, kind) reuses an already loaded base model (e.g. in tests).
    """
    from transformers import get_linear_schedule_with_warmup

    from .hub import load_base_model

    accelerator = make_accelerator(cfg.bf16)
    out = prepare_output_dir(cfg, overwrite, resume) if accelerator.is_main_process else Path(cfg.output_dir)
    accelerator.wait_for_everyone()
    if resume and (out / SUMMARY).is_file():
        return read_json(out, SUMMARY)  # finished already

    # data
    data = load_data(cfg)
    if data.task_split and accelerator.is_main_process:
        print(data.task_split["text"])
    base_model, tokenizer, kind = base if base is not None else load_base_model(cfg.model)
    examples, truncation = encode(cfg, data, "train", tokenizer, kind)

    # model
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    config = cfg.adapter_config(n_tasks=len(data.task_names))
    config.base_model_name_or_path = cfg.model
    config.extra = {"task_names": data.task_names}
    model = get_model(base_model, config)
    model.train()
    collate = Collator(tokenizer, kind)
    # a model-level task router starts from the training prompts' statistics (and k-means keys)
    model.fit_task_router(collated_batches(examples, collate, cfg.batch_size), kmeans=cfg.router_init == "kmeans",
                          seed=cfg.seed)

    # optimizer and the plan of every step
    plan = global_batches(len(examples), cfg.batch_size * cfg.grad_accum * accelerator.num_processes, cfg.seed,
                          cfg.epochs)
    total_steps = min(len(plan), cfg.max_steps) if cfg.max_steps else len(plan)
    if total_steps == 0:
        raise SkillMixError(f"no training examples: the split left 0 train instances ({data.summary()['train']})")
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.router_lr), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    start, prior_wall = (load_checkpoint(out, model, optimizer, scheduler) if resume and (out / CHECKPOINT).is_dir()
                         else (0, 0.0))
    prepared, optimizer = accelerator.prepare(model, optimizer)

    # the loop
    ctx = StepContext(cfg, prepared, accelerator.unwrap_model(prepared), optimizer, scheduler, accelerator, examples,
                      collate, kind, total_steps)
    probe = task_router_probe(ctx.inner, examples, collate, cfg.batch_size, accelerator.device) if cfg.probe_steps else None
    t_start = time.time() - prior_wall  # the wall time before a resume counts: train_wall_s covers the whole run
    log = run_loop(ctx, plan[:total_steps], start, out=out, t_start=t_start, probe=probe)
    wall = time.time() - t_start

    # summary and adapter out
    inner = ctx.inner
    summary = {
        "method": cfg.method, "model": cfg.model, "seed": cfg.seed, "steps": total_steps,
        "trainable_params": inner.num_trainable_parameters(), "train_examples": len(examples),
        "tasks": data.task_names, "split": {k: v for k, v in data.summary().items() if k in ("train", "test", "num_tasks")},
        "truncation": dataclasses.asdict(truncation), "train_wall_s": round(wall, 2), "resumed_from": start,
        "train_wall_complete": True,  # includes the wall time before a resume
        "median_step_s": round(sorted(r["step_time_s"] for r in log)[len(log) // 2], 4) if log else None,
        "final_loss": log[-1]["loss"] if log else None, "world_size": accelerator.num_processes,
        "adapter_config": inner.adapter_config.to_dict(),
    }
    if data.unseen is not None:  # instances of these tasks never entered training
        summary["unseen_tasks"] = data.unseen.task_names
        summary["task_split"] = {k: v for k, v in data.task_split.items() if k != "text"}
    if accelerator.is_main_process:
        inner.save_pretrained(out)
        atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    accelerator.wait_for_everyone()
    return summary


def run_loop(ctx: StepContext, plan: list[list[int]], start: int = 0, out: Path | None = None,
             t_start: float | None = None, after_step: Callable[[], None] | None = None,
             probe: Callable[[], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Optimizer steps `start`..len(plan) (plan[k]: the example indices of step k); returns their records.

    With `out` (a run directory): metrics.jsonl and TensorBoard every `logging_steps` (loss, lr, speed, the
    batch's routing statistics), `probe()` (the task router's NMI on a probe set) before the first step and
    every `probe_steps`, a checkpoint every `save_steps` and on Ctrl-C. `after_step` runs after every
    optimizer step (adaptation restores frozen rows).
    """
    cfg, accelerator = ctx.cfg, ctx.accelerator
    main = accelerator.is_main_process and out is not None
    t_start = time.time() if t_start is None else t_start
    metrics_path = out / METRICS_LOG if out is not None else None
    board = _tensorboard(out) if main else None

    def write(record: dict[str, Any]) -> None:
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if board is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    board.add_scalar(f"train/{key}", value, record["step"])

    if main and start == 0:
        metrics_path.write_text("")
        if probe is not None:
            write({"step": 0, **probe()})  # the routing before any update
    bar = tqdm(total=len(plan), initial=start, desc=f"train {cfg.method}", disable=not accelerator.is_main_process,
               leave=out is not None)
    log: list[dict[str, Any]] = []
    try:
        for step in range(start, len(plan)):
            t0 = time.time()
            loss, n_tokens, n_targets = train_step(ctx, step, plan[step])
            if not math.isfinite(loss):
                where = (f". The last good checkpoint (if any) is in {out / CHECKPOINT}; lower --lr or use --resume"
                         if out is not None else "; lower --lr")
                raise SkillMixError(f"loss became {loss} at step {step + 1}; stopped{where}")
            if ctx.scheduler is not None:
                ctx.scheduler.step()
            if after_step is not None:
                after_step()
            elapsed = time.time() - t0
            groups = ctx.optimizer.param_groups
            record = {"step": step + 1, "loss": round(loss, 6), "lr": groups[0]["lr"],
                      **({"router_lr": groups[1]["lr"]} if len(groups) > 1 else {}),
                      "step_time_s": round(elapsed, 4), "tokens_per_s": round(n_tokens / elapsed, 1),
                      "target_tokens": n_targets, "gumbel_temperature": gumbel_temperature(cfg, step, ctx.total_steps)}
            logging = (step + 1) % cfg.logging_steps == 0
            if logging:  # the last micro-batch's routing
                record.update(batch_routing_statistics(ctx.inner))
            if probe is not None and main and ((step + 1) % cfg.probe_steps == 0 or step + 1 == len(plan)):
                record.update(probe())
                logging = True
            log.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{n_tokens / elapsed:.0f}")
            if main and logging:
                write(record)
            if out is not None and cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < len(plan):
                if accelerator.is_main_process:
                    save_checkpoint(out, ctx.inner, ctx.optimizer, ctx.scheduler, step + 1, log, time.time() - t_start)
                accelerator.wait_for_everyone()
    except KeyboardInterrupt:
        if main:
            done = log[-1]["step"] if log else start
            if done > start:
                save_checkpoint(out, ctx.inner, ctx.optimizer, ctx.scheduler, done, log, time.time() - t_start)
            print(f"interrupted after step {done}: checkpoint in {out / CHECKPOINT}; continue with --resume")
        raise
    finally:
        bar.close()
        if board is not None:
            board.close()
    return log


def train_step(ctx: StepContext, step: int, indices: list[int]) -> tuple[float, int, int]:
    """One optimizer step over the global batch `indices`; returns (loss, tokens run through the model by all
    processes, target tokens). The loss is the sum over the global batch's target tokens divided by their
    number, so 1 process and N processes (same global batch) compute the same gradient."""
    cfg, accelerator, inner, kind = ctx.cfg, ctx.accelerator, ctx.inner, ctx.kind
    rank, world = accelerator.process_index, accelerator.num_processes
    inner.set_gumbel_temperature(gumbel_temperature(cfg, step, ctx.total_steps))
    chosen = choose_references(ctx.examples, indices, cfg.seed, step)
    total_targets = target_token_count(chosen, kind)
    shards = micro_batch_shards(chosen, cfg.batch_size, rank, world)
    loss_sum = torch.zeros(())
    seen_tokens = 0  # every non-padding token this process ran through the model
    for k, shard in enumerate(shards):
        if not shard:
            continue
        batch = ctx.collate(shard)
        seen_tokens += int(batch["attention_mask"].sum()) + (int((batch["labels"] != -100).sum()) if kind == "seq2seq" else 0)
        inputs = {key: value.to(accelerator.device)
                  for key, value in model_inputs(batch, inner.adapter_config.uses_task_ids).items()}
        last = k == len(shards) - 1
        sync = accelerator.no_sync(ctx.model) if not last and world > 1 else contextlib.nullcontext()
        with sync, accelerator.autocast():
            lm_loss = summed_lm_loss(ctx.model, inputs, target_tokens(batch, kind)) * (world / total_targets)
            loss = lm_loss + inner.aux_loss().to(lm_loss.device) / len(shards)
            accelerator.backward(loss)
        loss_sum += lm_loss.detach().float().cpu() / world
    if cfg.max_grad_norm:
        accelerator.clip_grad_norm_([p for p in ctx.model.parameters() if p.requires_grad], cfg.max_grad_norm)
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    loss_total = accelerator.reduce(loss_sum.to(accelerator.device), reduction="sum").item() if world > 1 else loss_sum.item()
    return loss_total, seen_tokens * world, total_targets


def parameter_groups(model: SkillMixModel, router_lr: float | None) -> list[dict[str, Any]]:
    """AdamW parameter groups: every trainable parameter, and with `router_lr` the routing parameters
    (`routing_parameter_names`: task router, allocation logits, token routers) in a group of their own."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if router_lr is None:
        return [{"params": trainable}]
    state = model.adapter_state_dict()
    routing = {id(state[k]) for k in model.routing_parameter_names()}
    groups = [{"params": [p for p in trainable if id(p) not in routing]},
              {"params": [p for p in trainable if id(p) in routing], "lr": router_lr}]
    return [g for g in groups if g["params"]] if groups[1]["params"] else groups[:1]


def task_router_probe(model: SkillMixModel, examples: list[EncodedExample], collate: Collator, batch_size: int,
                      device, per_task: int = 16) -> Callable[[], dict[str, float]] | None:
    """For a model with a task router: a function giving the NMI and purity of argmax w against the true tasks
    on a fixed probe set (the first `per_task` training prompts of each task). The task ids are used for this
    diagnostic only, never for routing."""
    if model.task_router is None:
        return None
    taken: dict[int, int] = {}
    chosen = []
    for ex in examples:
        if taken.get(ex.task_id, 0) < per_task:
            taken[ex.task_id] = taken.get(ex.task_id, 0) + 1
            chosen.append(ex)
    batches = list(collated_batches(chosen, collate, batch_size))
    true = [ex.task_id for ex in chosen]

    @torch.no_grad()
    def probe() -> dict[str, float]:
        weights = torch.cat([model.compute_task_weights(**{k: v.to(device) for k, v in model_inputs(b, False).items()})
                             for b in batches])
        assigned = weights.argmax(-1).cpu().tolist()
        return {"probe_nmi": round(nmi(true, assigned), 6), "probe_purity": round(purity(true, assigned), 6)}

    return probe


def batch_routing_statistics(model: SkillMixModel) -> dict[str, float]:
    """`metrics.routing_statistics` of the model's last forward (token routers only for token-routed methods)."""
    routing = model.last_routing()
    token = routing["layers"] if model.layer_class.routing == "token" else {}
    return routing_statistics(routing["task_weights"], token)


def gumbel_temperature(cfg: TrainConfig, step: int, total: int) -> float:
    """The skill routers' temperature at `step`: constant, or linear from `gumbel_temperature` to `_end`."""
    if cfg.gumbel_temperature_end is None or total <= 1:
        return cfg.gumbel_temperature
    return cfg.gumbel_temperature + (cfg.gumbel_temperature_end - cfg.gumbel_temperature) * step / (total - 1)


def _tensorboard(out: Path):
    """A TensorBoard writer into OUT/tensorboard when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))
