"""Markdown tables for docs/performance.md from the JSON files the benchmarks write.

    python benchmarks/report.py step benchmarks/results/step_time_cpu.json [--model smollm2]
    python benchmarks/report.py inference benchmarks/results/inference_cpu.json
    python benchmarks/report.py layer benchmarks/results/layer_time_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TARGET_X_LORA = {"orchmoe": 1.10, "mode": 1.15, "molora": 1.15, "molora_sd": 1.15}
TARGET_X_PEFT = {"lora": 1.02, "poly": 1.0, "mhr": 1.0}


def _f(r, k, spec=".3f"):
    return format(r[k], spec) if r.get(k) is not None else "-"


def step_table(data: dict, model: str | None) -> str:
    rows = []
    results = [r for r in data["results"] if model is None or r["model"] == model]
    lora = next((r for r in results if r["name"] == "lora"), None)
    for r in results:
        rng = r.get("paired_ratio_to_peft_range")
        peft = "-" if r.get("ratio_to_peft") is None else (
            f"{r['ratio_to_peft']:.3f} (paired {r['paired_ratio_to_peft']:.3f}"
            + (f", {rng[0]:.3f}-{rng[1]:.3f})" if rng else ")"))
        params = f"{r['trainable_params']:,d}" + (f" ({r['trainable_params'] / lora['trainable_params']:.2f}x)" if lora else "")
        rows.append([r["name"], r["config"], params, f"{r['step_ms'] / 1000:.2f}", _f(r, "ratio_to_lora"),
                     _f(r, "paired_ratio_to_lora"), peft, f"{r['wall_ms'] / 1000:.2f}", _f(r, "peak_mb", ".0f"),
                     _f(r, "peak_ratio_to_lora"), _f(r, "step_mb", ".0f"), _f(r, "step_mem_ratio_to_lora")])
    clock = results[0].get("clock", "wall") if results else "wall"
    header = ["method", "config", "trainable params (x lora)", f"step s ({clock})", "x lora", "paired x lora",
              "x PEFT peer", "wall s", "peak MB", "x lora", "step-alloc MB", "x lora"]
    return common.fmt_table(rows, header)


def inference_table(data: dict, model: str | None) -> str:
    rows = []
    for r in data["results"]:
        if model is not None and r["model"] != model:
            continue
        rows.append([r["name"], f"{r['prompt_tokens_per_s']:.0f}", _f(r, "prefill_x_base"), _f(r, "prefill_x_lora"),
                     f"{r['ms_per_token']:.1f}", _f(r, "token_x_base"), _f(r, "paired_token_x_base"), _f(r, "token_x_lora")])
    return common.fmt_table(rows, ["variant", "prompt tok/s", "prefill x base", "prefill x lora", "ms / new token",
                                   "x base", "paired x base", "x lora"])


def layer_table(data: dict) -> str:
    rows = []
    for r in data["results"]:
        ref = r.get("ref_adapter_ms")
        rows.append([r["name"], r["config"], f"{r['base_ms']:.2f}", "-" if ref is None else f"{ref:.2f}",
                     f"{r['fast_adapter_ms']:.2f}", "-" if ref is None else f"{r['fast_adapter_ms'] / ref:.2f}"])
    return common.fmt_table(rows, ["layer", "config", "bare base ms", "adapter ms, reference path",
                                   "adapter ms, fast path", "fast / reference"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("step", "inference", "layer"))
    p.add_argument("json")
    p.add_argument("--model", default=None)
    args = p.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    if args.kind == "step":
        models = [args.model] if args.model else sorted({r["model"] for r in data["results"]}, key=lambda m: m != "tiny-llama")
        for m in models:
            print(f"\n{m}\n")
            print(step_table(data, m))
    elif args.kind == "inference":
        models = [args.model] if args.model else sorted({r["model"] for r in data["results"]}, key=lambda m: m != "tiny-llama")
        for m in models:
            print(f"\n{m}\n")
            print(inference_table(data, m))
    else:
        print(layer_table(data))


if __name__ == "__main__":
    main()
