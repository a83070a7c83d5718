"""Tk-Instruct prompts for SuperNI: "Definition + k positive examples" (METHODS.md §6.3)."""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from skillmix.data.superni import Task
from skillmix.errors import SkillMixError


@dataclass(frozen=True)
class Prompt:
    """Source text, positive examples kept and left out for length, and whether the text was cut."""

    text: str
    num_examples: int
    examples_dropped: int
    truncated: bool


def _end_with_punctuation(text: str) -> str:
    return text if text and text[-1] in string.punctuation else text + "."


def _example_block(index: int, example: dict[str, str]) -> str:
    block = _end_with_punctuation(f" Positive Example {index} -\nInput: {example['input'].strip()}") + "\n"
    return _end_with_punctuation(block + f" Output: {example['output'].strip()}") + "\n\n"


def num_tokens(tokenizer: Any, text: str) -> int:
    """Token count of `text` including the tokenizer's special tokens (as Tk-Instruct counts)."""
    return len(tokenizer(text, verbose=False)["input_ids"])


def build_prompt(
    task: Task,
    instance_input: str,
    num_pos_examples: int = 2,
    add_definition: bool = True,
    tokenizer: Any = None,
    max_source_tokens: int | None = None,
    keep_end_tokens: int = 0,
) -> Prompt:
    """Tk-Instruct source text; `num_pos_examples=0` gives the definition-only variant.

    With `max_source_tokens`, an example block is kept only while definition + blocks + task input
    fit the budget, and a source still over budget is cut to its first `max_source_tokens` tokens
    (with `keep_end_tokens` > 0: its first `max_source_tokens - keep_end_tokens` and its last
    `keep_end_tokens` tokens, so a decoder-only model still sees the closing "Output:").
    """
    if num_pos_examples < 0:
        raise SkillMixError(f"number of positive examples must be >= 0, got {num_pos_examples}")
    if max_source_tokens is not None and tokenizer is None:
        raise SkillMixError("max_source_tokens needs a tokenizer to count tokens")
    definition = ""
    if add_definition:
        definition = _end_with_punctuation("Definition: " + task.definition.strip()) + "\n\n"
    task_input = _end_with_punctuation(f"Now complete the following example -\nInput: {instance_input.strip()}")
    task_input += "\nOutput: "
    wanted = task.positive_examples[:num_pos_examples]
    blocks: list[str] = []
    for index, example in enumerate(wanted, start=1):
        block = _example_block(index, example)
        if max_source_tokens is not None:
            if num_tokens(tokenizer, definition + "".join(blocks) + block + task_input) > max_source_tokens:
                break
        blocks.append(block)
    source = definition + "".join(blocks) + task_input
    dropped = len(wanted) - len(blocks)
    if max_source_tokens is None:
        return Prompt(source, len(blocks), dropped, truncated=False)
    ids = tokenizer(source, verbose=False)["input_ids"]
    if len(ids) <= max_source_tokens:
        return Prompt(source, len(blocks), dropped, truncated=False)
    keep = min(keep_end_tokens, max_source_tokens // 2)
    cut = tokenizer.decode(ids[: max_source_tokens - keep], skip_special_tokens=True)
    if keep:
        cut += tokenizer.decode(ids[-keep:], skip_special_tokens=True)
    return Prompt(cut, len(blocks), dropped, truncated=True)
