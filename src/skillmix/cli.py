"""`skillmix` command line: one function per command, all registered in `_build_parser`.

Bad input (`SkillMixError`) prints `error: <message>` on stderr and exits 2, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from statistics import fmean
from typing import Any

from skillmix.data import MultiTaskData, build_prompt, load_multitask_data, num_tokens
from skillmix.data.superni import DEFAULT_TEST_FRACTION
from skillmix.errors import SkillMixError


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose SuperNI tasks and split their instances (shared by data/train/eval commands)."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", help="task directory or natural-instructions checkout "
                       "(default: $SKILLMIX_DATA_DIR, else ../shared/superni/tasks)")
    group.add_argument("--tasks", help="comma-separated task names (default: all tasks in the directory)")
    group.add_argument("--num-tasks", type=_positive_int,
                       help="N random tasks: random.Random(seed).sample(sorted(names), N)")
    group.add_argument("--seed", type=int, default=0, help="seed for task sampling and instance splits (default 0)")
    group.add_argument("--n-test", type=_positive_int, help="test instances per task (default: --test-fraction)")
    group.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                       help=f"test share per task when no --n-test (default {DEFAULT_TEST_FRACTION})")
    group.add_argument("--n-train", type=int, help="train instances per task (default: all the rest)")
    group.add_argument("--max-instances", type=_positive_int, help="cap on instances per task, applied before splitting")
    group.add_argument("--skip-invalid", action="store_true",
                       help="skip bad task files (and tasks too small for the split) with a warning")


def data_from_args(args: argparse.Namespace) -> MultiTaskData:
    """Load and split the SuperNI tasks chosen by `add_data_arguments` options."""
    names = [name.strip() for name in args.tasks.split(",") if name.strip()] if args.tasks else None
    return load_multitask_data(
        data_dir=args.data_dir,
        names=names,
        num_tasks=args.num_tasks,
        seed=args.seed,
        n_test=args.n_test,
        n_train=args.n_train,
        test_fraction=args.test_fraction,
        max_instances=args.max_instances,
        skip_invalid=args.skip_invalid,
    )


def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SkillMixError(f"cannot load tokenizer {name!r}: {reason}") from None


def _mean_text(values: list[int]) -> str:
    return f"{fmean(values):.1f}" if values else "-"


def _print_table(header: list[str], rows: list[list[Any]]) -> None:
    """Print rows with the first two columns left-aligned and the rest right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


def cmd_data_summary(args: argparse.Namespace) -> int:
    """Print per-task instances, split sizes, categories and mean prompt/target lengths, then totals."""
    if args.tokenizer is None and (args.max_source_tokens or args.max_target_tokens):
        raise SkillMixError("--max-source-tokens/--max-target-tokens need --tokenizer to count tokens")
    data = data_from_args(args)
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None

    def length(text: str) -> int:
        return num_tokens(tokenizer, text) if tokenizer else len(text.split())

    sizes = data.summary()["tasks"]
    rows, all_prompts, all_targets = [], [], []
    cut_sources = cut_targets = short_prompts = 0
    for name, task in sorted(data.tasks.items()):
        prompt_lengths, target_lengths = [], []
        for instance in task.instances:
            prompt = build_prompt(task, instance.input, args.num_pos_examples, True, tokenizer, args.max_source_tokens)
            cut_sources += prompt.truncated
            short_prompts += prompt.examples_dropped > 0
            prompt_lengths.append(length(prompt.text))
            target_lengths += [length(reference) for reference in instance.outputs]
        if args.max_target_tokens is not None:
            cut_targets += sum(n > args.max_target_tokens for n in target_lengths)
        all_prompts += prompt_lengths
        all_targets += target_lengths
        rows.append([name, "; ".join(task.categories), len(task.instances), sizes[name]["train"], sizes[name]["test"],
                     _mean_text(prompt_lengths), _mean_text(target_lengths)])
    num_categories = len({c for t in data.tasks.values() for c in t.categories})
    rows.append([f"TOTAL ({len(rows)} tasks)", f"{num_categories} categories", len(all_prompts), len(data.train),
                 len(data.test), _mean_text(all_prompts), _mean_text(all_targets)])
    _print_table(["task", "categories", "instances", "train", "test", "prompt_len", "target_len"], rows)
    unit = f"tokens of {args.tokenizer}" if tokenizer else "whitespace words (pass --tokenizer for tokens)"
    print(f"lengths: mean {unit}; prompt = Definition + {args.num_pos_examples} positive examples + input")
    if tokenizer and (args.max_source_tokens or args.max_target_tokens):
        print(f"truncated: {cut_sources}/{len(all_prompts)} prompts cut to {args.max_source_tokens} tokens "
              f"({short_prompts} lost positive examples), "
              f"{cut_targets}/{len(all_targets)} targets over {args.max_target_tokens} tokens")
    print(f"split: seed {args.seed}, {len(data.train)} train / {len(data.test)} test instances")
    print(f"skipped invalid: {len(data.skipped)}" + "".join(f"\n  {s.reason}" for s in data.skipped))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skillmix", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) as well as warnings")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect SuperNI task data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    summary = data_commands.add_parser("summary", help="per-task instances, categories, split sizes and lengths")
    add_data_arguments(summary)
    summary.add_argument("--tokenizer", help="tokenizer name or path: report lengths in its tokens")
    summary.add_argument("--num-pos-examples", type=int, choices=(0, 1, 2), default=2,
                         help="positive examples in the prompt (default 2; 0 = definition only)")
    summary.add_argument("--max-source-tokens", type=_positive_int, help="count prompts over this budget (needs --tokenizer)")
    summary.add_argument("--max-target-tokens", type=_positive_int, help="count targets over this budget (needs --tokenizer)")
    summary.set_defaults(func=cmd_data_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `skillmix` command line; return the exit code."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except SkillMixError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
