"""A run directory and everything in it: the run's options (`TrainConfig`), its data, its file names,
its checkpoint, and reading a finished run back.

`skillmix train` writes a run directory; `eval`, `inspect`, `adapt` and `compare` read it through this
module only. Layout of OUT:

    train_config.json        the TrainConfig of the run (RUN_CONFIG)
    adapter_config.json      the adapter (save_pretrained), written when training ends
    adapter_model.safetensors
    metrics.jsonl            one line per logged optimizer step (METRICS_LOG)
    train_summary.json       written last: its presence means the run finished (SUMMARY)
    checkpoint/              while training: adapter, optimizer, scheduler and RNG states (CHECKPOINT)
    predictions*.jsonl, metrics*.json   `skillmix eval` (output_files)
    inspect/inspect.json     `skillmix inspect`: routing plots and their numbers (INSPECT)
    adapt_summary.json       in a `skillmix adapt` output directory (ADAPT_SUMMARY)
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import SkillMixConfig
from .data import OFFICIAL, encode_examples, load_multitask_data
from .errors import SkillMixError
from .io import atomic_save_safetensors, atomic_torch_save, atomic_write_text

RUN_CONFIG = "train_config.json"
CHECKPOINT = "checkpoint"
SUMMARY = "train_summary.json"
METRICS_LOG = "metrics.jsonl"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
ADAPT_SUMMARY = "adapt_summary.json"
INSPECT = "inspect.json"


def output_files(split: str) -> tuple[str, str]:
    """(predictions, metrics) file names for a split: predictions.jsonl/metrics.json for 'test',
    predictions_<split>.jsonl/metrics_<split>.json otherwise."""
    if split == "test":
        return PREDICTIONS, METRICS
    return f"predictions_{split}.jsonl", f"metrics_{split}.json"


def opt(default: Any, group: str, help: str) -> Any:
    """A TrainConfig field with its command-line group and one-line help (read by the CLI)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"group": group, "help": help})
    return field(default=default, metadata={"group": group, "help": help})


# Option groups: which command takes which options (the CLI builds its flags from these).
RUN, DATA, PROMPT, OPTIM = "run", "data", "prompt", "training"


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as OUT/train_config.json."""

    method: str = opt("orchmoe", RUN, "adapter method (a key of skillmix.LAYERS)")
    model: str = opt("SmolLM2-135M-Instruct", RUN, "base model: a preset name, hub id or local path")
    output_dir: str = opt("runs/run", RUN, "run directory")
    data_dir: str | None = opt(None, DATA, "SuperNI task directory (default: $SKILLMIX_DATA_DIR, else "
                                  "../shared/superni/tasks)")
    tasks: int | list[str] = opt(10, DATA, "N random tasks (seeded by --data-seed) or comma-separated task names")
    # Task-level split (docs/unseen.md): unseen tasks never enter training.
    unseen_tasks: float | list[str] | str | None = opt(
        None, DATA, "hold out unseen tasks: a fraction of the tasks (stratified by category), task names, or 'official'")
    unseen_categories: list[str] | None = opt(None, DATA, "also hold out every task of these categories")
    data_seed: int = opt(0, DATA, "seed of the task choice and the instance splits (fixed across training seeds)")
    n_test: int = opt(10, DATA, "held-out test instances per task")
    max_train_instances: int | None = opt(None, DATA, "training instances per task (default: all not held out)")
    num_pos_examples: int = opt(2, PROMPT, "positive examples in the prompt after the definition")
    max_source_tokens: int = opt(512, PROMPT, "prompt token budget")
    max_target_tokens: int = opt(64, PROMPT, "target token budget")
    seed: int = opt(0, OPTIM, "training seed: adapter init, data order, Gumbel noise")
    lr: float = opt(5e-5, OPTIM, "AdamW learning rate")
    epochs: int = opt(1, OPTIM, "passes over the training examples")
    max_steps: int | None = opt(None, OPTIM, "stop after this many optimizer steps")
    batch_size: int = opt(8, OPTIM, "examples per process and micro-batch")
    grad_accum: int = opt(1, OPTIM, "micro-batches per optimizer step")
    warmup_ratio: float = opt(0.0, OPTIM, "share of the steps with linear warm-up")
    weight_decay: float = opt(0.0, OPTIM, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, OPTIM, "gradient clipping norm (0: off)")
    bf16: bool = opt(False, OPTIM, "bf16 mixed precision (Accelerate)")
    gumbel_temperature: float = opt(1.0, OPTIM, "Gumbel-sigmoid temperature (start of a linear schedule)")
    gumbel_temperature_end: float | None = opt(None, OPTIM, "temperature at the last step (default: constant)")
    load_balancing_coef: float = opt(0.0, OPTIM, "weight of the routers' load-balancing loss")
    router_lr: float | None = opt(None, OPTIM, "learning rate of the routing parameters (task router, allocation "
                                  "logits, token routers; default: --lr)")
    router_init: str = opt("kmeans", OPTIM, "task router init: 'kmeans' (keys at the k-means centroids of the "
                           "training prompts) or 'random'")
    probe_steps: int = opt(10, OPTIM, "every N steps, NMI/purity of the task router on a fixed probe set of "
                           "training prompts (0: off)")
    save_steps: int = opt(0, OPTIM, "checkpoint every N steps (0: only when interrupted)")
    logging_steps: int = opt(1, OPTIM, "write metrics every N steps")
    adapter: dict[str, Any] = opt({}, "adapter", "SkillMixConfig fields (r, n_skills, ...)")

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise SkillMixError(f"train option {name}={getattr(self, name)!r}: expected {expected}")

        for name in ("lr",):
            if not getattr(self, name) > 0:
                bad(name, "a positive number")
        for name in ("epochs", "batch_size", "grad_accum", "n_test", "logging_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "a positive integer")
        if self.router_lr is not None and not self.router_lr > 0:
            bad("router_lr", "a positive number or None")
        if self.router_init not in ("kmeans", "random"):
            bad("router_init", "'kmeans' or 'random'")
        if not isinstance(self.probe_steps, int) or self.probe_steps < 0:
            bad("probe_steps", "a non-negative integer")
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

    @staticmethod
    def fields_of(group: str) -> list[dataclasses.Field]:
        """The TrainConfig fields of one option group (RUN, DATA, PROMPT, OPTIM)."""
        return [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("group") == group]

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


# ---- the run's data ---------------------------------------------------------------------------------
def load_data(cfg: TrainConfig, skip_invalid: bool = False):
    """The run's (seen) tasks and per-task train/test split, and `data.unseen` when the run holds tasks
    out (depends only on data options and data_seed)."""
    names = cfg.tasks if isinstance(cfg.tasks, list) else None
    num = cfg.tasks if isinstance(cfg.tasks, int) else None
    return load_multitask_data(cfg.data_dir, names=names, num_tasks=num, seed=cfg.data_seed, n_test=cfg.n_test,
                               n_train=None, max_instances=None if cfg.max_train_instances is None
                               else cfg.max_train_instances + cfg.n_test, skip_invalid=skip_invalid,
                               unseen=cfg.unseen_tasks, unseen_categories=cfg.unseen_categories)


def encode(cfg: TrainConfig, data, split: str, tokenizer, kind: str):
    """Tokenised examples of one split with the run's prompt options: (examples, TruncationReport)."""
    return encode_examples(data, split, tokenizer, kind, num_pos_examples=cfg.num_pos_examples,
                           max_source_tokens=cfg.max_source_tokens, max_target_tokens=cfg.max_target_tokens)


def holds_out_tasks(cfg: TrainConfig) -> bool:
    """True when the run splits its tasks into seen and unseen ones."""
    return cfg.unseen_tasks is not None or bool(cfg.unseen_categories)


# ---- reading a run ----------------------------------------------------------------------------------
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


def read_metrics_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl: one per logged step (with "loss"), and a step-0 record of the task
    router's probe before training when the run has one."""
    path = Path(run_dir) / METRICS_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def read_losses(run_dir: str | Path) -> list[float]:
    """The logged training losses, step by step."""
    return [r["loss"] for r in read_metrics_log(run_dir) if "loss" in r]


def read_json(run_dir: str | Path, name: str) -> dict[str, Any]:
    """One JSON file of a run directory (SUMMARY, METRICS, ...)."""
    return json.loads((Path(run_dir) / name).read_text())


# ---- writing a run ----------------------------------------------------------------------------------
def prepare_output_dir(cfg: TrainConfig, overwrite: bool, resume: bool) -> Path:
    """The run directory: checked against the saved options for a resume, else created (or replaced with
    `overwrite`) with train_config.json in it."""
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


def save_checkpoint(out: Path, model, optimizer, scheduler, step: int, log: list, wall_s: float = 0.0) -> None:
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


def load_checkpoint(out: Path, model, optimizer, scheduler) -> tuple[int, float]:
    """Restore adapter, optimizer, scheduler and RNG states; returns (the step to continue from, the wall
    time of the steps before it)."""
    from safetensors.torch import load_file

    ckpt = out / CHECKPOINT
    try:
        state_json = json.loads((ckpt / "trainer_state.json").read_text())
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
    return int(state_json["step"]), float(state_json.get("wall_s", 0.0))
