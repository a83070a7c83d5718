"""SuperNI metrics computed the official way (METHODS.md §6.4): exact match and ROUGE, 0-100.

ROUGE: Google's `rouge-score` with Porter stemming (rougeLsum splits sentences on newlines, so a
single-line text scores rougeLsum = rougeL). Each instance takes the max over its references,
values are means over instances x 100, rounded to 4 decimals; a missing prediction (None) is "".
"""
from __future__ import annotations

import math
import string
from collections import defaultdict
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from rouge_score import rouge_scorer

from skillmix.errors import SkillMixError

ROUGE_TYPES = ("rouge1", "rougeL", "rougeLsum")
METRICS = ("exact_match",) + ROUGE_TYPES
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def normalize_answer(text: str) -> str:
    """Lower-case, remove `string.punctuation`, collapse whitespace (articles are kept)."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(ref) for ref in references))


def rouge_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """F-measures (0-1) of rouge1, rougeL, rougeLsum, each the max over references."""
    best = dict.fromkeys(ROUGE_TYPES, 0.0)
    for reference in references:
        scores = _scorer().score(target=reference, prediction=prediction)
        for key in ROUGE_TYPES:
            best[key] = max(best[key], scores[key].fmeasure)
    return best


def _as_references(value: Any, index: int) -> list[str]:
    refs = [value] if isinstance(value, str) else value
    if not isinstance(refs, (list, tuple)) or not refs or not all(isinstance(r, str) for r in refs):
        raise SkillMixError(f"references[{index}] must be a string or a non-empty list of strings, got {value!r}")
    return list(refs)


def _as_groups(value: Any, name: str, index: int) -> list[str]:
    groups = [value] if isinstance(value, str) else value
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, str) for g in groups):
        raise SkillMixError(f"{name}[{index}] must be a string or a list of strings, got {value!r}")
    return list(groups)


def _mean(rows: list[dict[str, float]], scale: float = 100.0) -> dict[str, float]:
    return {key: scale * sum(row[key] for row in rows) / len(rows) for key in METRICS}


def _rounded(values: dict[str, float], count: int) -> dict[str, Any]:
    return {**{key: round(values[key], 4) for key in METRICS}, "num_instances": count}


def _check_length(name: str, values: Sequence | None, expected: int) -> None:
    if values is not None and len(values) != expected:
        raise SkillMixError(f"got {len(values)} {name} for {expected} predictions; one per prediction expected")


def superni_metrics(
    predictions: Sequence[str | None],
    references: Sequence[Sequence[str] | str],
    tasks: Sequence[str] | None = None,
    categories: Sequence[str | Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Micro EM/rouge1/rougeL/rougeLsum (0-100); with `tasks`/`categories` also per-task, per-category and macro.

    `macro` is the mean over tasks of the per-task values; an instance with several categories
    counts in each of them.
    """
    if len(predictions) == 0:
        raise SkillMixError("no predictions to score")
    _check_length("references", references, len(predictions))
    _check_length("task names", tasks, len(predictions))
    _check_length("categories", categories, len(predictions))
    rows = []
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        if prediction is not None and not isinstance(prediction, str):
            raise SkillMixError(f"predictions[{i}] must be a string or None, got {prediction!r}")
        prediction = prediction or ""
        refs = _as_references(refs, i)
        rows.append({"exact_match": exact_match(prediction, refs), **rouge_scores(prediction, refs)})
    result: dict[str, Any] = _rounded(_mean(rows), len(rows))
    if tasks is not None:
        by_task = defaultdict(list)
        for row, task in zip(rows, tasks):
            by_task[task].append(row)
        per_task = {task: _mean(task_rows) for task, task_rows in sorted(by_task.items())}
        result["per_task"] = {task: _rounded(values, len(by_task[task])) for task, values in per_task.items()}
        result["macro"] = {**_rounded(_mean(list(per_task.values()), scale=1.0), len(rows)), "num_tasks": len(per_task)}
    if categories is not None:
        by_category = defaultdict(list)
        for i, (row, value) in enumerate(zip(rows, categories)):
            for category in _as_groups(value, "categories", i):
                by_category[category].append(row)
        result["per_category"] = {c: _rounded(_mean(r), len(r)) for c, r in sorted(by_category.items())}
    return result


# ---- clustering metrics ------------------------------------------------------------------------------
def confusion(labels_true, labels_pred, n_true: int | None = None, n_pred: int | None = None) -> np.ndarray:
    """Counts [n_true, n_pred] of (true, predicted) pairs of non-negative integer labels."""
    t, p = np.asarray(labels_true, dtype=np.int64), np.asarray(labels_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise SkillMixError(f"confusion: expected two 1-D label arrays of equal length, got {t.shape} and {p.shape}")
    n_true = int(t.max(initial=-1)) + 1 if n_true is None else n_true
    n_pred = int(p.max(initial=-1)) + 1 if n_pred is None else n_pred
    counts = np.zeros((n_true, n_pred), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    return counts


def _contingency(labels_true, labels_pred) -> np.ndarray:
    """Confusion counts of arbitrary labels (each axis: the sorted distinct values)."""
    t = np.unique(np.asarray(labels_true), return_inverse=True)[1].ravel()
    p = np.unique(np.asarray(labels_pred), return_inverse=True)[1].ravel()
    return confusion(t, p)


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution proportional to `counts`."""
    q = counts[counts > 0] / counts.sum()
    return float(-(q * np.log(q)).sum())


def nmi(labels_true, labels_pred) -> float:
    """Normalised mutual information, MI / mean(H(true), H(pred)) (sklearn's default 'arithmetic')."""
    c = _contingency(labels_true, labels_pred).astype(np.float64)
    if c.shape[0] == c.shape[1] <= 1:  # one cluster each (or no data): identical labelings
        return 1.0
    n = c.sum()
    rows, cols = c.sum(1, keepdims=True), c.sum(0, keepdims=True)
    nz = c > 0
    mi = float((c[nz] / n * np.log(c[nz] * n / (rows @ cols)[nz])).sum())
    if mi <= 0:
        return 0.0
    return min(1.0, mi / max((_entropy(rows.ravel()) + _entropy(cols.ravel())) / 2, np.finfo(float).eps))


def purity(labels_true, labels_pred) -> float:
    """Share of examples whose predicted cluster's majority true label is their own."""
    c = _contingency(labels_true, labels_pred)
    return float(c.max(0).sum() / c.sum()) if c.size else 1.0


def routing_statistics(task_weights: torch.Tensor | None, layer_probs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Diagnostics of one batch's routing (`SkillMixModel.last_routing()`), for the training log.

    task_router_entropy: mean over prompts of H(w) / log N (1 = uniform, 0 = one abstract task per prompt);
    task_router_spread: mean over abstract tasks of the standard deviation of w_i across the batch's prompts
    (0 = every prompt routed alike); task_router_max_share: the largest batch-mean w_i (1/N = balanced);
    token_router_entropy: mean over layers and positions of H(p) / log E of token routers (`layer_probs`:
    the probabilities [B, T, E] or [B, T, G, m] of token-routed layers only).
    """
    stats: dict[str, float] = {}
    if task_weights is not None and task_weights.shape[-1] > 1:
        w = task_weights.float()
        entropy = -(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(w.shape[-1])
        stats["task_router_entropy"] = round(float(entropy.mean()), 6)
        stats["task_router_spread"] = round(float(w.std(0, unbiased=False).mean()), 6)
        stats["task_router_max_share"] = round(float(w.mean(0).max()), 6)
    token = [p.float() for p in layer_probs.values() if p.shape[-1] > 1]
    if token:
        entropies = [(-(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])).mean() for p in token]
        stats["token_router_entropy"] = round(float(torch.stack(entropies).mean()), 6)
    return stats
