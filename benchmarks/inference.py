"""Inference cost: prompt throughput and per-generated-token latency against the base model and LoRA.

Variants (one process, one base model; unmerged variants share the frozen base weights, merged
ones get their own copy of the weights):

  base                     the plain base model
  lora_merged              skillmix LoRA r=8 folded into the weights (merge_and_unload)
  lora                     skillmix LoRA r=8, unmerged
  peft_lora                PEFT LoRA r=8, unmerged
  molora ... orchmoe       every skillmix method, unmerged (parameter-matched configs of common.MATCHED)
  poly_export_merged       Poly's task-0 adapter exported as a plain LoRA (export_lora), loaded and merged
  orchmoe_export_merged    OrchMoE collapsed for one task-weight vector (export_lora), loaded and merged

Prompt throughput: tokens/s of one no-grad forward over a batch of prompts (default 8 x 256, no KV
cache). Per-token latency: greedy `generate` from a prompt (default 1 x 64) with exactly N new tokens;
latency = (t(N new) - t(1 new)) / (N - 1), i.e. decoding steps only, prefill excluded. Variants are
timed round-robin, order rotated per repetition; medians are reported with ratios to `base` and `lora`.

    python benchmarks/inference.py                         # tiny-llama and SmolLM2-135M
    python benchmarks/inference.py --quick
    python benchmarks/inference.py --device cuda --dtype bfloat16 --json inference.json
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import torch

import common
from skillmix import load_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
UNMERGED = common.SKILLMIX_METHODS[:1] + ("peft_lora",) + common.SKILLMIX_METHODS[1:]  # each PEFT peer next to its counterpart


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Runner:
    """How to call one variant: forward over prompts and generate, with its routing inputs."""

    def __init__(self, name: str, model, task_ids: torch.Tensor | None = None):
        self.name, self.model, self.task_ids = name, model.eval(), task_ids

    def _extra(self, bsz: int) -> dict:
        return {} if self.task_ids is None else {"task_ids": self.task_ids[:bsz]}

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.model(input_ids=ids, attention_mask=mask, use_cache=False, **self._extra(ids.shape[0]))

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        return self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                   do_sample=False, pad_token_id=0, **self._extra(ids.shape[0]))


def build_runners(base, args, batch_size: int, names: list[str]) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    device = next(base.parameters()).device
    if "base" in names:
        runners["base"] = Runner("base", base)
    if "lora_merged" in names:
        v = common.build_variant("lora", copy.deepcopy(base), batch_size)
        runners["lora_merged"] = Runner("lora_merged", v.model.merge_and_unload())
    for name in names:
        if name in UNMERGED:
            v = common.build_variant(name, base, batch_size)
            runners[name] = Runner(name, v.model, v.extra_inputs.get("task_ids"))
    with tempfile.TemporaryDirectory() as tmp:
        for method, kwargs in (("poly", {"task_id": 0}), ("orchmoe", {"task_weights": [0.7, 0.1, 0.1, 0.1]})):
            name = f"{method}_export_merged"
            if name not in names:
                continue
            v = common.build_variant(method, base, batch_size)
            rank = v.model.export_lora(os.path.join(tmp, method), **kwargs)
            merged = load_model(copy.deepcopy(base), os.path.join(tmp, method)).merge_and_unload()
            runners[name] = Runner(name, merged.to(device))
            log(f"  {name}: exported rank {rank}, merged")
    return runners


def bench_model(model_name: str, args, names: list[str], shapes: dict) -> list[dict]:
    dtype, device = DTYPES[args.dtype], args.device
    base, _ = common.load_base(model_name, dtype, device)
    vocab = base.config.vocab_size
    pb, pt, gb, gt, n_new = shapes["prompt_batch"], shapes["prompt_len"], shapes["gen_batch"], shapes["gen_prompt_len"], shapes["new_tokens"]
    runners = build_runners(base, args, max(pb, gb), names)
    g = torch.Generator().manual_seed(0)
    p_ids = torch.randint(3, vocab, (pb, pt), generator=g).to(device)
    g_ids = torch.randint(3, vocab, (gb, gt), generator=g).to(device)
    p_mask, g_mask = torch.ones_like(p_ids), torch.ones_like(g_ids)
    log(f"[{model_name}] prompts {pb} x {pt}; generation {gb} x {gt} + {n_new} new tokens; {args.dtype} on {device}")
    fns = {}
    for name, r in runners.items():
        fns[f"{name}|prefill"] = (lambda r=r: r.prefill(p_ids, p_mask))
        fns[f"{name}|gen_n"] = (lambda r=r: r.generate(g_ids, g_mask, n_new))
        fns[f"{name}|gen_1"] = (lambda r=r: r.generate(g_ids, g_mask, 1))
    # all variants generate the same number of tokens (min_new_tokens), so the latency is comparable
    times = common.round_robin(fns, shapes["warmup"], shapes["reps"], device, log=log if args.verbose else None)
    results = []
    for name in runners:
        prefill = common.median(times[f"{name}|prefill"])
        per_rep = [(a - b) / (n_new - 1) for a, b in zip(times[f"{name}|gen_n"], times[f"{name}|gen_1"])]
        results.append({"model": model_name, "name": name, "prompt_tokens_per_s": pb * pt / prefill,
                        "prefill_ms": 1000 * prefill, "ms_per_token": 1000 * common.median(per_rep),
                        "ms_per_token_all": [1000 * t for t in per_rep],
                        "prefill_ms_all": [1000 * t for t in times[f"{name}|prefill"]]})
    by = {r["name"]: r for r in results}
    for r in results:
        for ref in ("base", "lora"):
            if ref in by:
                r[f"prefill_x_{ref}"] = r["prefill_ms"] / by[ref]["prefill_ms"]
                r[f"token_x_{ref}"] = r["ms_per_token"] / by[ref]["ms_per_token"]
                r[f"paired_token_x_{ref}"] = common.median(
                    [a / b for a, b in zip(r["ms_per_token_all"], by[ref]["ms_per_token_all"])])
    return results


def print_table(results: list[dict]) -> None:
    rows = []
    for r in results:
        f = lambda k: format(r[k], ".3f") if k in r else "-"
        rows.append([r["model"], r["name"], f"{r['prompt_tokens_per_s']:.0f}", f("prefill_x_base"), f("prefill_x_lora"),
                     f"{r['ms_per_token']:.2f}", f("token_x_base"), f("paired_token_x_base"), f("token_x_lora")])
    print(common.fmt_table(rows, ["model", "variant", "prompt tok/s", "prefill x base", "prefill x lora",
                                  "ms / new token", "x base", "paired x base", "x lora"]))


def main(argv=None) -> None:
    variants = ["base", "lora_merged", *UNMERGED, "poly_export_merged", "orchmoe_export_merged"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny-llama,smollm2")
    p.add_argument("--variants", default=",".join(variants))
    p.add_argument("--prompt-batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--gen-batch", type=int, default=1)
    p.add_argument("--gen-prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default: tiny 10, others 5)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=None, help="default 1 on CPU (see step_time.py)")
    p.add_argument("--quick", action="store_true", help="smoke run: prompts 2 x 64, 8 new tokens, 2 repetitions")
    p.add_argument("--json", default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in variants]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; expected some of {', '.join(variants)}")
    machine = common.machine_info()
    log(f"machine: {machine}")
    t0 = time.perf_counter()
    results = []
    for model_name in [m for m in args.models.split(",") if m]:
        tiny = model_name.startswith("tiny")
        shapes = dict(prompt_batch=args.prompt_batch, prompt_len=args.prompt_len, gen_batch=args.gen_batch,
                      gen_prompt_len=args.gen_prompt_len, new_tokens=args.new_tokens, warmup=args.warmup,
                      reps=args.reps or (10 if tiny else 5))
        if args.quick:
            shapes.update(prompt_batch=2, prompt_len=64, new_tokens=8, reps=2)
        rows = bench_model(model_name, args, names, shapes)
        for r in rows:
            r.update({k: shapes[k] for k in ("prompt_batch", "prompt_len", "gen_batch", "gen_prompt_len", "new_tokens", "reps")})
        results += rows
    elapsed = time.perf_counter() - t0
    common.finish(results, machine, args, elapsed, print_table)


if __name__ == "__main__":
    main()
