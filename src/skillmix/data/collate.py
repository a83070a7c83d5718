"""Tokenise SuperNI examples and collate them into batches for causal or seq2seq models.

Encoding happens once (`encode_examples`), so truncation is counted once per example and
reported in a `TruncationReport`; `Collator` then only picks a reference and pads.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch

from skillmix.data.prompts import build_prompt
from skillmix.data.superni import MultiTaskData
from skillmix.errors import SkillMixError

logger = logging.getLogger(__name__)

KINDS = ("causal", "seq2seq")
IGNORE_INDEX = -100
MODEL_KEYS = ("input_ids", "attention_mask", "labels")
CAUSAL_TAIL_TOKENS = 16  # tokens kept from the end of an over-long causal prompt


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one instance: the prompt and one id list per reference answer."""

    task: str
    task_id: int
    id: str
    prompt_ids: list[int]
    target_ids: tuple[list[int], ...]
    references: tuple[str, ...]


@dataclass
class TruncationReport:
    """What token budgets cut: prompts, reference targets, and prompts that lost example blocks."""

    examples: int = 0
    sources_truncated: int = 0
    targets: int = 0
    targets_truncated: int = 0
    prompts_shortened: int = 0  # prompts that left positive examples out for length

    def __str__(self) -> str:
        return (
            f"{self.sources_truncated}/{self.examples} prompts truncated, "
            f"{self.targets_truncated}/{self.targets} targets truncated, "
            f"{self.prompts_shortened}/{self.examples} prompts lost positive examples for length"
        )

    @property
    def any(self) -> bool:
        """True when any budget cut something."""
        return bool(self.sources_truncated or self.targets_truncated or self.prompts_shortened)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise SkillMixError(f"model kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _causal_target_ids(tokenizer: Any, context: str, context_ids: list[int], reference: str) -> list[int]:
    """Ids of " <reference>" as the tokenizer splits it right after `context` (no special tokens)."""
    answer = reference.strip()
    if not answer:
        return []
    full = tokenizer(context + " " + answer, verbose=False)["input_ids"]
    if full[: len(context_ids)] == context_ids:
        return full[len(context_ids) :]
    return tokenizer(" " + answer, add_special_tokens=False, verbose=False)["input_ids"]


def encode_examples(
    data: MultiTaskData,
    split: str,
    tokenizer: Any,
    kind: str,
    num_pos_examples: int = 2,
    add_definition: bool = True,
    max_source_tokens: int | None = 1024,
    max_target_tokens: int | None = 128,
) -> tuple[list[EncodedExample], TruncationReport]:
    """Encode `data.train` or `data.test`; truncation counts come back in the report and are logged.

    causal: the prompt's trailing space moves onto the answer (" Yes." after "Output:"), and the
    target budget includes the EOS appended by the collator. seq2seq: targets use `text_target`.
    """
    _check_kind(kind)
    if split not in ("train", "test"):
        raise SkillMixError(f"split must be 'train' or 'test', got {split!r}")
    task_ids = {name: i for i, name in enumerate(data.task_names)}
    target_budget = None if max_target_tokens is None else max_target_tokens - (kind == "causal")
    report, encoded = TruncationReport(), []
    for instance in getattr(data, split):
        task = data.tasks[instance.task]
        keep_end = CAUSAL_TAIL_TOKENS if kind == "causal" else 0
        prompt = build_prompt(task, instance.input, num_pos_examples, add_definition, tokenizer, max_source_tokens, keep_end)
        source = prompt.text.rstrip(" ") if kind == "causal" else prompt.text
        source_ids = tokenizer(source, verbose=False)["input_ids"]
        prompt_ids = source_ids
        if max_source_tokens is not None and len(source_ids) > max_source_tokens:
            if kind == "causal":  # cut the middle: a decoder-only model must still see "...Output:" at the end
                tail = min(CAUSAL_TAIL_TOKENS, max_source_tokens // 2)
                prompt_ids = source_ids[: max_source_tokens - tail] + source_ids[-tail:]
            else:
                prompt_ids = tokenizer(source, truncation=True, max_length=max_source_tokens)["input_ids"]
        report.examples += 1
        report.sources_truncated += prompt.truncated or len(prompt_ids) < len(source_ids)
        report.prompts_shortened += prompt.examples_dropped > 0
        targets = []
        for reference in instance.outputs:
            if kind == "causal":
                ids = _causal_target_ids(tokenizer, source, source_ids, reference)
            else:
                ids = tokenizer(text_target=reference, verbose=False)["input_ids"]
            if target_budget is not None and len(ids) > target_budget:
                report.targets_truncated += 1
                if kind == "seq2seq":  # let the tokenizer keep its closing special token
                    ids = tokenizer(text_target=reference, truncation=True, max_length=target_budget)["input_ids"]
                else:
                    ids = ids[:target_budget]
            report.targets += 1
            targets.append(ids)
        encoded.append(
            EncodedExample(instance.task, task_ids[instance.task], instance.id, prompt_ids, tuple(targets), instance.outputs)
        )
    if report.any:
        logger.warning("%s split: %s", split, report)
    return encoded, report


def _pad(sequences: list[list[int]], value: int, side: str) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    rows = [[value] * (width - len(s)) + s if side == "left" else s + [value] * (width - len(s)) for s in sequences]
    return torch.tensor(rows, dtype=torch.long)  # [B, L]


class Collator:
    """Batch `EncodedExample`s: train mode adds labels (prompt masked), generate mode only the prompt.

    Padding defaults to right for training and left for causal generation. Each batch also holds
    `task_ids` [B] and `meta` (task, id, references per row) for routing and evaluation.
    """

    def __init__(self, tokenizer: Any, kind: str, generate: bool = False, padding_side: str | None = None, seed: int = 0):
        _check_kind(kind)
        if padding_side not in (None, "left", "right"):
            raise SkillMixError(f"padding side must be 'left' or 'right', got {padding_side!r}")
        self.kind, self.generate = kind, generate
        self.padding_side = padding_side or ("left" if generate and kind == "causal" else "right")
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        if self.pad_id is None or (kind == "causal" and self.eos_id is None):
            raise SkillMixError("tokenizer needs an eos_token (and a pad_token or eos to pad with)")
        self._rng = random.Random(seed)  # reference choice per training batch, as Tk-Instruct

    def __call__(self, examples: list[EncodedExample]) -> dict[str, Any]:
        if not examples:
            raise SkillMixError("cannot collate an empty batch")
        sources = [ex.prompt_ids for ex in examples]
        batch: dict[str, Any] = {}
        if self.generate:
            batch["input_ids"] = _pad(sources, self.pad_id, self.padding_side)
            batch["attention_mask"] = _pad([[1] * len(s) for s in sources], 0, self.padding_side)
        else:
            targets = [self._rng.choice(ex.target_ids) for ex in examples]
            if self.kind == "causal":
                sequences = [s + t + [self.eos_id] for s, t in zip(sources, targets)]
                labels = [[IGNORE_INDEX] * len(s) + t + [self.eos_id] for s, t in zip(sources, targets)]
            else:
                sequences, labels = sources, targets
            batch["input_ids"] = _pad(sequences, self.pad_id, self.padding_side)
            batch["attention_mask"] = _pad([[1] * len(s) for s in sequences], 0, self.padding_side)
            label_side = self.padding_side if self.kind == "causal" else "right"  # decoder labels: always right
            batch["labels"] = _pad(labels, IGNORE_INDEX, label_side)
        batch["task_ids"] = torch.tensor([ex.task_id for ex in examples], dtype=torch.long)  # [B]
        batch["meta"] = [{"task": ex.task, "id": ex.id, "references": list(ex.references)} for ex in examples]
        return batch


def model_inputs(batch: dict[str, Any], uses_task_ids: bool) -> dict[str, torch.Tensor]:
    """Keyword arguments for the model: tensors only, `task_ids` kept only for methods that use them (poly, mhr)."""
    keys = MODEL_KEYS + (("task_ids",) if uses_task_ids else ())
    return {key: batch[key] for key in keys if key in batch}
