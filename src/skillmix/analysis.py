"""Inspect a trained run: allocation heatmaps, task-router clustering quality and expert utilisation."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .batching import collated_batches
from .data import Collator, model_inputs
from .errors import SkillMixError
from .io import atomic_write_text
from .metrics import confusion, nmi, purity
from .model import SkillMixModel, load_model
from .runs import INSPECT, TrainConfig, encode, load_data, read_metrics_log, read_run_config

# Cross-attention key/value projections of a seq2seq decoder read encoder states.
_CROSS_KV = re.compile(r"(EncDecAttention|encoder_attn)\.[kv](_proj)?$")


# ---- plotting ----------------------------------------------------------------------------------------
def _short_layer(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'L3 self_attn.q_proj' (encoder/decoder prefixed 'enc'/'dec')."""
    index = re.search(r"\.(\d+)\.", name)
    side = "enc " if "encoder." in name else "dec " if "decoder." in name else ""
    return f"{side}L{index.group(1)} {'.'.join(name.rsplit('.', 2)[-2:])}" if index else name


def _short(label: str, width: int = 24) -> str:
    return label if len(label) <= width else label[:width - 1] + "…"


def _heatmap_grid(path: Path, mats: dict[str, np.ndarray], row_labels: list[str], xlabel: str, title: str,
                  vmax: float | None = None, separators: int = 0) -> None:
    """One small heatmap per layer on a shared colour scale; `separators`: column-group width to outline."""
    n = len(mats)
    rows_m, cols_m = next(iter(mats.values())).shape
    ncols = max(1, min(n, math.ceil(math.sqrt(n * max(rows_m, 1) / max(cols_m, 1)))))
    nrows = math.ceil(n / ncols)
    label_w = 0.09 * max(len(s) for s in row_labels) + 0.3
    panel_w, panel_h = 0.3 * cols_m + 0.5, 0.25 * rows_m + 0.6
    fig = Figure(figsize=(label_w + ncols * panel_w + 1.2, nrows * panel_h + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    vmax = vmax if vmax is not None else max(float(m.max()) for m in mats.values()) or 1.0
    image = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        name, mat = list(mats.items())[i]
        image = ax.imshow(mat, vmin=0, vmax=vmax, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set_title(_short_layer(name), fontsize=7)
        ax.set_xticks(range(cols_m), [str(j % separators if separators else j) for j in range(cols_m)], fontsize=6)
        ax.set_yticks(range(rows_m), row_labels if i % ncols == 0 else [""] * rows_m, fontsize=6)
        for x in range(separators, cols_m, separators or cols_m):
            ax.axvline(x - 0.5, color="white", linewidth=1.5)
        if i + ncols >= n:
            ax.set_xlabel(xlabel, fontsize=7)
    fig.colorbar(image, ax=axes.tolist(), shrink=0.6).ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)


def _annotated(ax, mat: np.ndarray, row_labels: list[str], col_labels: list[str], title: str, fmt: str,
               vmax: float | None = None) -> None:
    image = ax.imshow(mat, cmap="viridis", aspect="auto", interpolation="nearest", vmin=0, vmax=vmax)
    ax.set_xticks(range(mat.shape[1]), col_labels, fontsize=7)
    ax.set_yticks(range(mat.shape[0]), row_labels, fontsize=7)
    ax.set_title(title, fontsize=8)
    if mat.size <= 400:
        hi = vmax if vmax is not None else mat.max() if mat.size else 0
        for (y, x), v in np.ndenumerate(mat):
            ax.text(x, y, format(v, fmt), ha="center", va="center", fontsize=6,
                    color="black" if v > 0.6 * hi else "white")
    ax.figure.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)


# ---- per-method inspection -----------------------------------------------------------------------------
def _batches(cfg: TrainConfig, examples, tokenizer, kind: str):
    """Training-mode batches (prompt + target, right-padded) of `examples`, batch_size at a time."""
    return collated_batches(examples, Collator(tokenizer, kind, seed=cfg.seed), cfg.batch_size)


def _allocation(model: SkillMixModel, task_names: list[str], out: Path, files: list[str]) -> dict[str, Any]:
    """Plot sigma(Theta) per layer: rows are task ids (a method routed by task id, [n_tasks, h, S]: heads side by
    side) or abstract tasks ([N, S]), columns skills."""
    alloc = {name: a.float().cpu().numpy() for name, a in model.last_routing()["allocation"].items()}
    if not alloc:  # no learned allocation (e.g. OrchMoE with skill_router="uniform")
        return {}
    first = next(iter(alloc.values()))
    n_rows, n_skills = first.shape[0], first.shape[-1]
    heads = first.shape[1] if first.ndim == 3 else 1
    rows = [_short(t) for t in task_names] if model.layer_class.uses_task_ids else [f"a{i}" for i in range(n_rows)]
    mats = {name: a.reshape(a.shape[0], -1) for name, a in alloc.items()}  # [rows, h*S]
    xlabel = "skill (per head)" if heads > 1 else "skill"
    path = out / "allocation.png"
    _heatmap_grid(path, mats, rows, xlabel, f"{model.method}: allocation sigmoid(Theta) per layer", vmax=1.0,
                  separators=n_skills if heads > 1 else 0)
    files.append(str(path))
    return {name: a.tolist() for name, a in alloc.items()}


@torch.no_grad()
def _task_router(model: SkillMixModel, cfg: TrainConfig, examples, tokenizer, kind: str, task_names: list[str],
                 out: Path, files: list[str]) -> dict[str, Any]:
    """Task-router weights on every prompt: confusion true task x abstract task, NMI, purity, mean w."""
    device = next(model.parameters()).device
    weights, tasks = [], []
    for batch in _batches(cfg, examples, tokenizer, kind):
        inputs = {k: v.to(device) for k, v in model_inputs(batch, False).items()}
        weights.append(model.compute_task_weights(**inputs).float().cpu())  # [B, N]
        tasks.append(batch["task_ids"])
    w, true = torch.cat(weights).numpy(), torch.cat(tasks).numpy()  # [n, N], [n]
    n_abstract = w.shape[1]
    assigned = w.argmax(1)
    counts = confusion(true, assigned, len(task_names), n_abstract)  # [n_tasks, N]
    mean_w = np.stack([w[true == t].mean(0) if (true == t).any() else np.zeros(n_abstract)
                       for t in range(len(task_names))])  # [n_tasks, N]
    rows, cols = [_short(t) for t in task_names], [f"a{i}" for i in range(n_abstract)]
    fig = Figure(figsize=(2 * (0.4 * n_abstract + 1.5) + 0.1 * max(map(len, rows)), 0.3 * len(rows) + 1.5),
                 layout="constrained")
    left, right = fig.subplots(1, 2)
    _annotated(left, counts, rows, cols, "examples: true task x argmax w", "d")
    _annotated(right, mean_w, [""] * len(rows), cols, "mean task weight w", ".2f", vmax=1.0)
    score_nmi, score_purity = nmi(true, assigned), purity(true, assigned)
    fig.suptitle(f"{model.method} task router: NMI {score_nmi:.3f}, purity {score_purity:.3f}", fontsize=9)
    path = out / "task_router.png"
    fig.savefig(path, dpi=120)
    files.append(str(path))
    return {"confusion": counts.tolist(), "nmi": score_nmi, "purity": score_purity, "mean_weights": mean_w.tolist(),
            "abstract_task_counts": counts.sum(0).tolist()}


def _probe_curve(run_dir: Path, out: Path, files: list[str]) -> dict[str, list] | None:
    """The task router's probe NMI and purity against the training step (metrics.jsonl), plotted."""
    records = [r for r in read_metrics_log(run_dir) if "probe_nmi" in r]
    if not records:
        return None
    curve = {key: [r[key] for r in records] for key in ("step", "probe_nmi", "probe_purity")}
    fig = Figure(figsize=(4.5, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot(curve["step"], curve["probe_nmi"], marker="o", label="NMI")
    ax.plot(curve["step"], curve["probe_purity"], marker="s", label="purity")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.set_title("task router on the probe prompts (argmax w vs true task)", fontsize=8)
    ax.legend(fontsize=7)
    path = out / "router_nmi.png"
    fig.savefig(path, dpi=120)
    files.append(str(path))
    return curve


def _token_mask(name: str, kind: str, batch: dict[str, Any]) -> torch.Tensor:
    """Real-token mask [B, T] of the sequence a layer sees (decoder side of a seq2seq model: the labels)."""
    if kind == "seq2seq" and "decoder." in name and not _CROSS_KV.search(name):
        return batch["labels"] != -100
    return batch["attention_mask"].bool()


def _norm_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy / log(E) over the last axis of a (renormalised) distribution, in [0, 1]."""
    q = p / np.clip(p.sum(-1, keepdims=True), 1e-12, None)
    h = -(np.where(q > 0, q * np.log(np.clip(q, 1e-12, None)), 0.0)).sum(-1)
    return h / math.log(p.shape[-1]) if p.shape[-1] > 1 else np.ones_like(h)


@torch.no_grad()
def _utilisation(model: SkillMixModel, cfg: TrainConfig, examples, tokenizer, kind: str, task_names: list[str],
                 out: Path, files: list[str]) -> dict[str, Any]:
    """Token-router probabilities averaged over real tokens: per layer, per task, and their balance."""
    device = next(model.parameters()).device
    n_tasks = len(task_names)
    sums: dict[str, torch.Tensor] = {}  # layer -> [n_tasks, G, E] summed probabilities
    token_h: dict[str, torch.Tensor] = {}  # layer -> [G] summed per-token normalised entropy
    tokens: dict[str, torch.Tensor] = {}  # layer -> [n_tasks] real-token counts
    for batch in _batches(cfg, examples, tokenizer, kind):
        model(**{k: v.to(device) for k, v in model_inputs(batch, False).items()})
        onehot = torch.nn.functional.one_hot(batch["task_ids"], n_tasks).float()  # [B, n_tasks]
        for name, probs in model.last_routing()["layers"].items():
            probs = probs.float().cpu()
            probs = probs.unsqueeze(2) if probs.dim() == 3 else probs  # [B, T, G, E]
            mask = _token_mask(name, kind, batch)
            if mask.shape != probs.shape[:2]:
                raise SkillMixError(f"{name}: router probabilities {tuple(probs.shape)} do not match the "
                                    f"token mask {tuple(mask.shape)}")
            mask = mask.float()  # [B, T]
            per_example = torch.einsum("bt,btge->bge", mask, probs)  # [B, G, E]
            h = torch.from_numpy(_norm_entropy(probs.numpy())).float()  # [B, T, G]
            sums[name] = sums.get(name, 0) + torch.einsum("bn,bge->nge", onehot, per_example)
            token_h[name] = token_h.get(name, 0) + torch.einsum("bt,btg->g", mask, h)
            tokens[name] = tokens.get(name, 0) + onehot.T @ mask.sum(1)
    layers = list(sums)
    group_util = {n: (sums[n].sum(0) / tokens[n].sum().clamp_min(1)).numpy() for n in layers}  # [G, E]
    util = np.stack([group_util[n].mean(0) for n in layers])  # [L, E]
    balance = np.array([_norm_entropy(group_util[n]).mean() for n in layers])  # [L]
    per_task = {n: (sums[n].mean(1) / tokens[n].clamp_min(1)[:, None]).numpy() for n in layers}  # [n_tasks, E]
    n_experts = util.shape[1]

    fig = Figure(figsize=(0.45 * n_experts + 4.5, 0.22 * len(layers) + 1.5), layout="constrained")
    ax_map, ax_bar = fig.subplots(1, 2, sharey=True, width_ratios=[max(n_experts, 2), 3])
    image = ax_map.imshow(util, cmap="viridis", aspect="auto", interpolation="nearest", vmin=0)
    ax_map.set_yticks(range(len(layers)), [_short_layer(n) for n in layers], fontsize=6)
    ax_map.set_xticks(range(n_experts), range(n_experts), fontsize=7)
    ax_map.set_xlabel("expert", fontsize=8)
    groups = group_util[layers[0]].shape[0]
    ax_map.set_title("mean router probability" + (" (over rank groups)" if groups > 1 else ""), fontsize=8)
    fig.colorbar(image, ax=ax_map, shrink=0.8).ax.tick_params(labelsize=7)
    ax_bar.barh(range(len(layers)), balance, color="tab:gray")
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xticks([0, 0.5, 1], ["0", "0.5", "1"], fontsize=7)
    ax_bar.set_xlabel("balance entropy / log E", fontsize=8)
    fig.suptitle(f"{model.method}: expert utilisation over the real tokens of {len(examples)} examples", fontsize=9)
    path = out / "utilisation.png"
    fig.savefig(path, dpi=120)
    files.append(str(path))

    path = out / "utilisation_per_task.png"
    _heatmap_grid(path, per_task, [_short(t) for t in task_names], "expert",
                  f"{model.method}: mean router probability per task")
    files.append(str(path))
    summary = {
        "utilisation": {n: u.tolist() for n, u in zip(layers, util)},  # [E] mean probability per expert
        "balance_entropy": dict(zip(layers, balance.tolist())),  # H(mean probability) / log E: 1 = balanced
        # mean per-token H(probabilities) / log E: 0 = every token picks one expert
        "token_entropy": {n: float((token_h[n] / tokens[n].sum().clamp_min(1)).mean()) for n in layers},
        "per_task_utilisation": {t: {n: per_task[n][i].tolist() for n in layers} for i, t in enumerate(task_names)},
        "tokens": {n: int(tokens[n].sum()) for n in layers},
    }
    if groups > 1:  # one router per rank group (MoDE)
        path = out / "utilisation_groups.png"
        _heatmap_grid(path, group_util, [f"g{g}" for g in range(group_util[layers[0]].shape[0])], "expert",
                      f"{model.method}: mean router probability per rank group")
        files.append(str(path))
        summary["group_utilisation"] = {n: u.tolist() for n, u in group_util.items()}
    return summary


# ---- entry point ---------------------------------------------------------------------------------------
def inspect_run(run_dir: str | Path, output_dir: str | Path | None = None, split: str = "train",
                max_examples: int | None = None, base=None, unseen_tasks: list[str] | None = None) -> dict[str, Any]:
    """Write routing plots and inspect.json for the run in `run_dir`; returns the summary (with `files`).

    `unseen_tasks` (names, with split="unseen") routes these tasks, which the run never trained on,
    instead of the run's own unseen tasks (also for a run trained without a hold-out).
    `base` = (model, tokenizer, kind) reuses a loaded base model; the adapter is injected into it in place.
    `max_examples` keeps a seeded random subset of the split's examples.
    """
    from .hub import load_base_model

    run_dir = Path(run_dir)
    if split not in ("train", "test", "unseen"):
        raise SkillMixError(f"split must be 'train', 'test' or 'unseen', got {split!r}")
    cfg = read_run_config(run_dir, split, unseen_tasks, option="inspect")
    out = Path(output_dir) if output_dir is not None else run_dir / ("inspect_unseen" if split == "unseen" else "inspect")
    out.mkdir(parents=True, exist_ok=True)
    base_model, tokenizer, kind = base if base is not None else load_base_model(cfg.model)
    model = load_model(base_model, run_dir)
    method, routing = model.method, model.layer_class.routing
    task_names = model.adapter_config.extra.get("task_names")
    summary: dict[str, Any] = {"method": method, "run_dir": str(run_dir), "split": split}
    files: list[str] = []

    if routing == "none":
        summary["note"] = f"{method} has no routing: nothing to inspect"
    else:
        if routing == "sequence":
            task_names = task_names or [f"task{i}" for i in range(model.adapter_config.n_tasks)]
            allocation = _allocation(model, task_names, out, files)
            if allocation:
                summary["allocation"] = allocation
        if model.layer_class.uses_task_weights or routing == "token":  # routing that depends on the prompt
            data = load_data(cfg)
            if split == "unseen":  # the evaluation prompts of the unseen tasks (routing of new tasks)
                if data.unseen is None:
                    raise SkillMixError(f"{run_dir}: --split unseen needs a run trained with --unseen-tasks")
                data = data.unseen
            task_names = data.task_names
            examples, _ = encode(cfg, data, "test" if split == "unseen" else split, tokenizer, kind)
            if max_examples is not None and max_examples < len(examples):
                keep = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed))[:max_examples]
                examples = [examples[i] for i in sorted(keep.tolist())]
            if not examples:
                raise SkillMixError(f"{run_dir}: the {split} split has no examples to inspect")
            summary["num_examples"] = len(examples)
            if model.layer_class.uses_task_weights:
                summary["task_router"] = _task_router(model, cfg, examples, tokenizer, kind, task_names, out, files)
                curve = _probe_curve(run_dir, out, files)
                if curve:
                    summary["probe"] = curve
            else:
                summary.update(_utilisation(model, cfg, examples, tokenizer, kind, task_names, out, files))
    if task_names:
        summary["tasks"] = task_names
    summary["files"] = files + [str(out / INSPECT)]
    atomic_write_text(out / INSPECT, json.dumps(summary, indent=2) + "\n")
    return summary
