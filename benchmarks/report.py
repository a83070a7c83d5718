"""Markdown tables for docs/performance.md from the JSON files the benchmarks write.

    python benchmarks/report.py step benchmarks/results/step_time_cpu.json [--model smollm2]
    python benchmarks/report.py inference benchmarks/results/inference_cpu.json
    python benchmarks/report.py layer benchmarks/results/layer_time_cpu.json
"""
from __future__ import annotations

import argparse
import json

import common

TARGET_X_LORA = {"orchmoe": 1.10, "mode": 1.15, "molora": 1.15, "molora_sd": 1.15}
TARGET_X_PEFT = {"lora": 1.02, "poly": 1.0, "mhr": 1.0}


def _f(r, k, spec=".3f"):
    return format(r[k], spec) if r.get(k) is not None else "-"


PEERS = {"lora": "peft_lora", "poly": "peft_poly", "mhr": "peft_mhr"}


def _ratios(r: dict, ref: dict) -> tuple[float, float, float]:
    """(ratio of medians, median of paired per-repetition ratios, ratio of minima) of step times."""
    a, b = r["step_ms_all"], ref["step_ms_all"]
    paired = [x / y for x, y in zip(a, b)]
    return common.median(a) / common.median(b), common.median(paired), min(a) / min(b)


def step_table(data: dict, model: str | None) -> str:
    rows = []
    results = [r for r in data["results"] if model is None or r["model"] == model]
    by = {r["name"]: r for r in results}
    lora = by.get("lora")
    for r in results:
        params = f"{r['trainable_params']:,d}" + (f" ({r['trainable_params'] / lora['trainable_params']:.2f}x)" if lora else "")
        x_lora = "/".join(f"{v:.3f}" for v in _ratios(r, lora)) if lora else "-"
        peer = by.get(PEERS.get(r["name"], ""))
        x_peft = "/".join(f"{v:.3f}" for v in _ratios(r, peer)) if peer else "-"
        rows.append([r["name"], r["config"], params, f"{r['step_ms']:.1f}", f"{min(r['step_ms_all']):.1f}",
                     x_lora, x_peft, f"{r['wall_ms']:.1f}" if "wall_ms" in r else "-", _f(r, "peak_mb", ".0f"),
                     _f(r, "peak_ratio_to_lora"), _f(r, "step_mb", ".0f"), _f(r, "step_mem_ratio_to_lora")])
    clock = results[0].get("clock", "wall") if results else "wall"
    header = ["method", "config", "trainable params (x lora)", f"median step ms ({clock})", "min step ms",
              "x lora (median/paired/min)", "x PEFT peer (median/paired/min)", "median wall ms", "peak MB", "x lora",
              "step-alloc MB", "x lora"]
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


def predict_table(q: dict, v: dict, step: dict, model: str, blocks: int) -> str:
    """Expected step-time ratios from the layer measurements: step(lora) + blocks * (adapter cost difference
    at q_proj + at v_proj), divided by step(lora) (or by the PEFT peer's, built the same way)."""
    lay = {r["name"]: r["fast_adapter_ms"] for r in q["results"]}
    lay_v = {r["name"]: r["fast_adapter_ms"] for r in v["results"]}
    lora_step = next(r["step_ms"] for r in step["results"] if r["model"] == model and r["name"] == "lora")
    total = {m: blocks * (lay[m] + lay_v[m]) for m in lay}
    base = lora_step - total["lora"]
    rows = []
    for m, t in total.items():
        peer = PEERS.get(m)
        rows.append([m, f"{lay[m]:.2f}", f"{lay_v[m]:.2f}", f"{t / 1000:.3f}", f"{(base + t) / lora_step:.3f}",
                     f"{(base + t) / (base + total[peer]):.3f}" if peer in total else "-"])
    return common.fmt_table(rows, ["method", "q_proj adapter ms", "v_proj adapter ms", f"{blocks} blocks, s",
                                   "predicted x lora", "predicted x PEFT peer"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("step", "inference", "layer", "predict"))
    p.add_argument("json", nargs="+", help="predict: layer_q.json layer_v.json step.json")
    p.add_argument("--model", default=None)
    p.add_argument("--blocks", type=int, default=30, help="predict: transformer blocks (SmolLM2-135M: 30)")
    args = p.parse_args(argv)
    loaded = []
    for path in args.json:
        with open(path) as f:
            loaded.append(json.load(f))
    data = loaded[0]
    if args.kind == "predict":
        print(predict_table(*loaded[:3], model=args.model or "smollm2", blocks=args.blocks))
        return
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
