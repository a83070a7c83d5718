"""The training loss of one micro-batch: cross-entropy summed over its target tokens.

The loop divides the sum by the global batch's target-token count, so one process and several processes
(the same global batch) compute the same gradient.
"""
from __future__ import annotations

from typing import Any

import torch

from .data.collate import IGNORE_INDEX


def target_tokens(batch: dict[str, Any], kind: str) -> int:
    """Number of label tokens that enter the loss (after the causal shift)."""
    labels = batch["labels"][:, 1:] if kind == "causal" else batch["labels"]
    return int((labels != IGNORE_INDEX).sum())


def summed_lm_loss(model, inputs: dict[str, torch.Tensor], n_targets: int) -> torch.Tensor:
    """Sum over the batch's `n_targets` target tokens of the token cross-entropy (the model's mean loss,
    from its `labels`, times the count); a zero that keeps the graph when the batch has no target."""
    out = model(**inputs)
    if not n_targets:
        return out.logits.sum() * 0.0
    return out.loss * n_targets
