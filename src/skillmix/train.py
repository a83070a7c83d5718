"""Multi-task training on SuperNI: config in, model built, loop, checkpoints, final adapter out.

Reads top to bottom: `TrainConfig` (every hyper-parameter, also from a YAML/JSON file), `prepare_data`,
`build_model`, then `train`, which runs the loop under Accelerate (one or several processes),
checkpoints atomically every `save_steps`, resumes exactly, and stops cleanly on Ctrl-C or a NaN loss.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from .config import SkillMixConfig
from .data import OFFICIAL, Collator, encode_examples, load_multitask_data, model_inputs
from .errors import SkillMixError
from .io import atomic_save_safetensors, atomic_torch_save, atomic_write_text
from .model import SkillMixModel, get_model

logger = logging.getLogger(__name__)

RUN_CONFIG = "train_config.json"
CHECKPOINT = "checkpoint"
SUMMARY = "train_summary.json"


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as OUT/train_config.json."""

    method: str = "orchmoe"
    model: str = "SmolLM2-135M-Instruct"
    output_dir: str = "runs/run"
    data_dir: str | None = None
    tasks: int | list[str] = 10  # N random tasks (seeded by data_seed) or a list of task names
    # Task-level split (docs/unseen.md): a fraction of the `tasks` pool (stratified by category), a list
    # of task names, or "official"; unseen tasks never enter training. None: every task is seen.
    unseen_tasks: float | list[str] | str | None = None
    unseen_categories: list[str] | None = None  # also hold out every task of these categories
    data_seed: int = 0  # task choice and instance split; fixed across training seeds
    seed: int = 0  # adapter init, data order, Gumbel noise
    n_test: int = 10  # held-out instances per task
    max_train_instances: int | None = None  # per task; None: every instance not held out
    num_pos_examples: int = 2
    max_source_tokens: int = 512
    max_target_tokens: int = 64
    lr: float = 5e-5
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    gumbel_temperature: float = 1.0  # start of a linear schedule
    gumbel_temperature_end: float | None = None  # None: constant
    load_balancing_coef: float = 0.0
    save_steps: int = 0  # 0: checkpoint only when interrupted
    logging_steps: int = 1
    adapter: dict[str, Any] = field(default_factory=dict)  # SkillMixConfig fields (r, n_skills, ...)

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise SkillMixError(f"train option {name}={getattr(self, name)!r}: expected {expected}")

        for name in ("lr",):
            if not getattr(self, name) > 0:
                bad(name, "a positive number")
        for name in ("epochs", "batch_size", "grad_accum", "n_test", "logging_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "a positive integer")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", "a positive integer or None")
        if not 0 <= self.warmup_ratio < 1:
            bad("warmup_ratio", "a float in [0, 1)")
        if not isinstance(self.tasks, (int, list)) or (isinstance(self.tasks, int) and self.tasks < 1):
            bad("tasks", "a positive number of random tasks or a list of task names")
        if isinstance(self.unseen_tasks, str):
            self.unseen_tasks = [self.unseen_tasks]
        if self.unseen_tasks == [OFFICIAL]:
            self.unseen_tasks = OFFICIAL
        unseen = self.unseen_tasks
        if not (unseen is None or unseen == OFFICIAL
                or (isinstance(unseen, float) and 0 < unseen < 1)
                or (isinstance(unseen, list) and unseen and all(isinstance(n, str) for n in unseen))):
            bad("unseen_tasks", f"a fraction in (0, 1), a list of task names or '{OFFICIAL}'")
        if isinstance(self.unseen_categories, str):
            self.unseen_categories = [self.unseen_categories]
        if self.unseen_categories is not None and not (
                self.unseen_categories and all(isinstance(c, str) for c in self.unseen_categories)):
            bad("unseen_categories", "a list of SuperNI category names")
        self.adapter_config()  # validates method and adapter fields

    def adapter_config(self, n_tasks: int = 1) -> SkillMixConfig:
        fields = {"n_tasks": n_tasks, **self.adapter, "method": self.method,
                  "gumbel_temperature": self.gumbel_temperature, "load_balancing_coef": self.load_balancing_coef}
        known = {f.name for f in dataclasses.fields(SkillMixConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise SkillMixError(f"train option adapter: unknown field(s) {', '.join(unknown)}; expected SkillMixConfig fields")
        return SkillMixConfig(**fields)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        """Read a YAML/JSON config file; `overrides` (e.g. from command-line flags) win."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise SkillMixError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise SkillMixError(f"{path}: invalid YAML/JSON ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise SkillMixError(f"{path}: expected a mapping of train options, got {type(data).__name__}")
        return cls.from_dict({**data, **overrides}, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "train config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SkillMixError(f"{source}: unknown train option(s) {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- data -------------------------------------------------------------------------------------------
def load_data(cfg: TrainConfig):
    """The run's (seen) tasks and per-task train/test split, and `data.unseen` when the run holds tasks
    out (depends only on data options and data_seed)."""
    names = cfg.tasks if isinstance(cfg.tasks, list) else None
    num = cfg.tasks if isinstance(cfg.tasks, int) else None
    return load_multitask_data(cfg.data_dir, names=names, num_tasks=num, seed=cfg.data_seed, n_test=cfg.n_test,
                               n_train=None, max_instances=None if cfg.max_train_instances is None
                               else cfg.max_train_instances + cfg.n_test,
                               unseen=cfg.unseen_tasks, unseen_categories=cfg.unseen_categories)


def read_run_config(run_dir: str | Path, split: str = "test", unseen_tasks: list[str] | None = None,
                    option: str = "--adapter") -> TrainConfig:
    """The TrainConfig of a trained run (its train_config.json); with `unseen_tasks` (split "unseen" only) the
    config that holds these tasks out instead (`with_unseen_tasks`)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise SkillMixError(f"{option} {run_dir}: no {RUN_CONFIG}; expected the output directory of 'skillmix train'")
    cfg = TrainConfig.from_dict(json.loads(path.read_text()), source=str(path))
    if unseen_tasks is not None:
        if split != "unseen":
            raise SkillMixError(f"--unseen-tasks with --split {split}: expected --split unseen")
        cfg = with_unseen_tasks(cfg, unseen_tasks)
    return cfg


def with_unseen_tasks(cfg: TrainConfig, names: list[str], option: str = "--unseen-tasks") -> TrainConfig:
    """`cfg` with `names` as its unseen tasks and its seen tasks pinned by name: lets a trained run (with or
    without a hold-out) be evaluated zero-shot on, or adapted to, tasks it never trained on. The seen
    tasks and their instance splits are the run's own; a name that is a training task is an error."""
    names = [names] if isinstance(names, str) else list(names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise SkillMixError(f"{option}: expected one or more task names")
    seen = load_data(cfg).task_names
    overlap = sorted(set(names) & set(seen))
    if overlap:
        raise SkillMixError(f"{option}: task {overlap[0]!r} is a training task of the run; expected tasks it never "
                            "trained on")
    return dataclasses.replace(cfg, tasks=list(seen), unseen_tasks=sorted(set(names)), unseen_categories=None)


def encode(cfg: TrainConfig, data, split: str, tokenizer, kind: str):
    return encode_examples(data, split, tokenizer, kind, num_pos_examples=cfg.num_pos_examples,
                           max_source_tokens=cfg.max_source_tokens, max_target_tokens=cfg.max_target_tokens)


def global_batches(num_examples: int, global_batch: int, seed: int, epochs: int) -> list[list[int]]:
    """Example indices of every optimizer step: a seeded permutation per epoch, cut into global batches."""
    steps = []
    for epoch in range(epochs):
        order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        steps += [order[i:i + global_batch] for i in range(0, num_examples, global_batch)]
    return steps


def target_tokens(batch: dict[str, Any], kind: str) -> int:
    """Number of label tokens that enter the loss (after the causal shift)."""
    labels = batch["labels"][:, 1:] if kind == "causal" else batch["labels"]
    return int((labels != -100).sum())


# ---- checkpoints ------------------------------------------------------------------------------------
def save_checkpoint(out: Path, model: SkillMixModel, optimizer, scheduler, step: int, log: list,
                    wall_s: float = 0.0) -> None:
    """Write OUT/checkpoint atomically: a fresh directory renamed over the previous one."""
    tmp = out / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_safetensors(model.adapter_state_dict(), tmp / "adapter_model.safetensors")
    atomic_torch_save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}, tmp / "state.pt")
    atomic_write_text(tmp / "trainer_state.json",
                      json.dumps({"step": step, "log_tail": log[-5:], "wall_s": round(wall_s, 2)}) + "\n")
    final, old = out / CHECKPOINT, out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, model: SkillMixModel, optimizer, scheduler) -> int:
    """Restore adapter, optimizer, scheduler and RNG states; returns the step to continue from."""
    from safetensors.torch import load_file

    ckpt = out / CHECKPOINT
    try:
        step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        model.load_adapter_state_dict(load_file(str(ckpt / "adapter_model.safetensors")), source=str(ckpt))
        state = torch.load(ckpt / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
    except SkillMixError:
        raise
    except Exception as err:  # any unreadable piece means the checkpoint cannot be trusted
        raise SkillMixError(f"{ckpt}: corrupt or incomplete checkpoint ({type(err).__name__}: {err}); "
                            "delete it or rerun with --overwrite") from None
    return int(step)


# ---- the run ------------------------------------------------------------------------------------------
def prepare_output_dir(cfg: TrainConfig, overwrite: bool, resume: bool) -> Path:
    out = Path(cfg.output_dir)
    if resume:
        if not (out / RUN_CONFIG).is_file():
            raise SkillMixError(f"--resume: {out} holds no {RUN_CONFIG}; nothing to resume")
        # options added since the run started take their defaults (older train_config.json files lack them)
        saved = TrainConfig.from_dict(json.loads((out / RUN_CONFIG).read_text()), source=str(out / RUN_CONFIG))
        saved, current = (json.loads(json.dumps(c.to_dict())) for c in (saved, cfg))
        if saved != current:
            changed = sorted(k for k in saved if saved.get(k) != current.get(k))
            raise SkillMixError(f"--resume: options differ from the run in {out} ({', '.join(changed)})")
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SkillMixError(f"output directory {out} exists and is not empty; pass --overwrite or --resume")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RUN_CONFIG, json.dumps(cfg.to_dict(), indent=2) + "\n")
    return out


def train(cfg: TrainConfig, overwrite: bool = False, resume: bool = False, base=None) -> dict[str, Any]:
    """Train one adapter; returns the run summary (also written to OUT/train_summary.json).

    `base` = (model, tokenizer, kind) reuses an already loaded base model (e.g. in tests).
    """
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    from .hub import load_base_model

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # a new run may change mixed precision; the process group (PartialState) stays
    # without a GPU, cpu=True lets Accelerate run several CPU processes (gloo) under torchrun/accelerate launch
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    out = prepare_output_dir(cfg, overwrite, resume) if accelerator.is_main_process else Path(cfg.output_dir)
    accelerator.wait_for_everyone()
    if resume and (out / SUMMARY).is_file():
        return json.loads((out / SUMMARY).read_text())  # finished already

    data = load_data(cfg)
    if data.task_split and accelerator.is_main_process:
        print(data.task_split["text"])
    base_model, tokenizer, kind = base if base is not None else load_base_model(cfg.model)
    examples, truncation = encode(cfg, data, "train", tokenizer, kind)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    config = cfg.adapter_config(n_tasks=len(data.task_names))
    config.base_model_name_or_path = cfg.model
    config.extra = {"task_names": data.task_names}
    model = get_model(base_model, config)
    model.train()

    global_batch = cfg.batch_size * cfg.grad_accum * world
    plan = global_batches(len(examples), global_batch, cfg.seed, cfg.epochs)
    total_steps = min(len(plan), cfg.max_steps) if cfg.max_steps else len(plan)
    if total_steps == 0:
        raise SkillMixError(f"no training examples: the split left 0 train instances ({data.summary()['train']})")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)
    start = load_checkpoint(out, model, optimizer, scheduler) if resume and (out / CHECKPOINT).is_dir() else 0
    model, optimizer = accelerator.prepare(model, optimizer)
    inner: SkillMixModel = accelerator.unwrap_model(model)

    log: list[dict] = []
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process and start == 0:
        metrics_path.write_text("")
    board = _tensorboard(out) if accelerator.is_main_process else None
    bar = tqdm(total=total_steps, initial=start, desc=f"train {cfg.method}", disable=not accelerator.is_main_process)
    # wall time of the steps before a resume (saved with the checkpoint), so train_wall_s covers the whole run
    prior_wall = json.loads((out / CHECKPOINT / "trainer_state.json").read_text()).get("wall_s", 0.0) if start else 0.0
    t_start, step = time.time() - prior_wall, start
    try:
        for step in range(start, total_steps):
            t0 = time.time()
            loss_value, n_tokens, n_targets = _train_step(cfg, inner, model, optimizer, accelerator, examples, plan[step],
                                               step, total_steps, tokenizer, kind, rank, world)
            if not math.isfinite(loss_value):
                raise SkillMixError(f"loss became {loss_value} at step {step + 1}; stopped. The last good "
                                    f"checkpoint (if any) is in {out / CHECKPOINT}; lower --lr or use --resume")
            scheduler.step()
            elapsed = time.time() - t0
            record = {"step": step + 1, "loss": round(loss_value, 6), "lr": scheduler.get_last_lr()[0],
                      "step_time_s": round(elapsed, 4), "tokens_per_s": round(n_tokens / elapsed, 1),
                      "target_tokens": n_targets,
                      "gumbel_temperature": _temperature(cfg, step, total_steps)}
            log.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{n_tokens / elapsed:.0f}")
            if accelerator.is_main_process and (step + 1) % cfg.logging_steps == 0:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                if board is not None:
                    for key in ("loss", "lr", "tokens_per_s", "gumbel_temperature"):
                        board.add_scalar(f"train/{key}", record[key], step + 1)
            if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total_steps:
                if accelerator.is_main_process:
                    save_checkpoint(out, inner, optimizer, scheduler, step + 1, log, time.time() - t_start)
                accelerator.wait_for_everyone()
    except KeyboardInterrupt:
        if accelerator.is_main_process:
            done = log[-1]["step"] if log else start
            if done > start:
                save_checkpoint(out, inner, optimizer, scheduler, done, log, time.time() - t_start)
            print(f"interrupted after step {done}: checkpoint in {out / CHECKPOINT}; continue with --resume")
        raise
    finally:
        bar.close()
        if board is not None:
            board.close()

    wall = time.time() - t_start
    summary = {
        "method": cfg.method, "model": cfg.model, "seed": cfg.seed, "steps": total_steps,
        "trainable_params": inner.num_trainable_parameters(), "train_examples": len(examples),
        "tasks": data.task_names, "split": {k: v for k, v in data.summary().items() if k in ("train", "test", "num_tasks")},
        "truncation": dataclasses.asdict(truncation), "train_wall_s": round(wall, 2), "resumed_from": start,
        "train_wall_complete": True,  # includes the wall time before a resume
        "median_step_s": round(sorted(r["step_time_s"] for r in log)[len(log) // 2], 4) if log else None,
        "final_loss": log[-1]["loss"] if log else None, "world_size": world,
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


def _tensorboard(out: Path):
    """A TensorBoard writer into OUT/tensorboard when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _temperature(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.gumbel_temperature_end is None or total <= 1:
        return cfg.gumbel_temperature
    return cfg.gumbel_temperature + (cfg.gumbel_temperature_end - cfg.gumbel_temperature) * step / (total - 1)


def _train_step(cfg, inner, model, optimizer, accelerator, examples, indices, step, total, tokenizer, kind, rank, world):
    """One optimizer step over a global batch; the loss is a sum over target tokens / all tokens of the
    global batch, so 1 process and N processes (same global batch) compute the same gradient."""
    inner.set_gumbel_temperature(_temperature(cfg, step, total))
    chooser = random.Random(f"{cfg.seed}:{step}")  # reference choice, identical on every process
    chosen = [dataclasses.replace(examples[i], target_ids=(chooser.choice(examples[i].target_ids),)) for i in indices]
    collate = Collator(tokenizer, kind)
    micro = cfg.batch_size * world
    micro_batches = [chosen[i:i + micro] for i in range(0, len(chosen), micro)]
    total_tokens = sum(len(ex.target_ids[0]) + (kind == "causal") for ex in chosen)  # + EOS for causal
    loss_sum = torch.zeros(())
    seen_tokens = 0  # every non-padding token this process ran through the model
    for k, mb in enumerate(micro_batches):
        shard = mb[rank::world]
        if not shard:
            continue
        batch = collate(shard)
        seen_tokens += int(batch["attention_mask"].sum()) + (int((batch["labels"] != -100).sum()) if kind == "seq2seq" else 0)
        inputs = {key: value.to(accelerator.device) for key, value in model_inputs(batch, inner.adapter_config.uses_task_ids).items()}
        sync = k == len(micro_batches) - 1
        ctx = accelerator.no_sync(model) if not sync and world > 1 else contextlib.nullcontext()
        with ctx, accelerator.autocast():
            out = model(**inputs)
            n = target_tokens(batch, kind)
            lm_loss = out.loss * (n / total_tokens * world) if n else out.logits.sum() * 0.0
            loss = lm_loss + inner.aux_loss().to(lm_loss.device) / len(micro_batches)
            accelerator.backward(loss)
        loss_sum += lm_loss.detach().float().cpu() / world
    if cfg.max_grad_norm:
        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_total = accelerator.reduce(loss_sum.to(accelerator.device), reduction="sum").item() if world > 1 else loss_sum.item()
    return loss_total, seen_tokens * world, total_tokens

