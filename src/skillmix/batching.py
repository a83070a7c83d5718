"""Which examples each optimizer step trains on: the seeded step plan, the reference chosen per example,
and the split of a global batch into micro-batches and per-process shards.

Everything here is a pure function of (examples, seed, step, world size), so a resumed run, one process
and several processes see the same examples in the same order.
"""
from __future__ import annotations

import dataclasses
import random

import torch

from .data import Collator, EncodedExample


def global_batches(num_examples: int, global_batch: int, seed: int, epochs: int) -> list[list[int]]:
    """Example indices of every optimizer step: a seeded permutation per epoch, cut into global batches."""
    steps = []
    for epoch in range(epochs):
        order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        steps += [order[i:i + global_batch] for i in range(0, num_examples, global_batch)]
    return steps


def choose_references(examples: list[EncodedExample], indices: list[int], seed: int, step: int) -> list[EncodedExample]:
    """The step's examples, each with one of its reference targets (seeded by step, the same on every process)."""
    chooser = random.Random(f"{seed}:{step}")
    return [dataclasses.replace(examples[i], target_ids=(chooser.choice(examples[i].target_ids),)) for i in indices]


def target_token_count(examples: list[EncodedExample], kind: str) -> int:
    """Target tokens of single-reference examples that enter the loss (with EOS for a causal LM)."""
    return sum(len(ex.target_ids[0]) + (kind == "causal") for ex in examples)


def micro_batch_shards(examples: list, micro_batch: int, rank: int, world: int) -> list[list]:
    """The global batch cut into micro-batches of `micro_batch` examples per process; this process's shard
    of each (rows rank, rank + world, ...). A shard may be empty at the end of an epoch."""
    step = micro_batch * world
    return [examples[i:i + step][rank::world] for i in range(0, len(examples), step)]


def collated_batches(examples: list[EncodedExample], collate: Collator, batch_size: int):
    """The examples collated in order, `batch_size` at a time (router init, probes, inspection)."""
    for i in range(0, len(examples), batch_size):
        yield collate(examples[i:i + batch_size])
