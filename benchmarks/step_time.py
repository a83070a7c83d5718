"""Training-step time and peak memory of every skillmix method and of PEFT's LoRA, Poly and MHR.

All methods share one base model (the same frozen weight tensors) and one batch, live in one
process, and are timed round-robin: each repetition runs one step of every method, in an order
rotated per repetition, so machine noise hits all methods alike and the ratios are meaningful.
A step is forward + backward + AdamW step (lr 1e-4), in train mode, on a causal-LM batch whose
first half is prompt (labels -100).

Peak memory: the first (untimed, warm-up) step of every method runs under a tensor-counting dispatch
mode (benchmarks/common.py: TensorMemory): static bytes (the distinct storages of the weights and
buffers) + the high-water mark of the tensors allocated during the step (activations saved for
backward, gradients, the AdamW state created in that step). `--memory rss`
instead runs each method in a fresh subprocess and reports its peak resident set size
(getrusage ru_maxrss), which includes the Python/torch runtime.

    python benchmarks/step_time.py                      # tiny-llama and SmolLM2-135M, 8 x 256
    python benchmarks/step_time.py --quick              # < 1 minute
    python benchmarks/step_time.py --json out.json
    python benchmarks/step_time.py --device cuda --dtype bfloat16   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import common
from common import ALL_METHODS, MATCHED, TIMING_ORDER

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_step(variant: common.Variant, batch: dict, lr: float = 1e-4):
    model = variant.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(**batch, **variant.extra_inputs)
        out.loss.backward()
        opt.step()

    return step, opt


def measure_memory(variant: common.Variant, step) -> dict[str, float]:
    """One (untimed, first) step under the tensor counter: static MB (weights and buffers, shared base
    weights counted as if the model were alone) + the high-water mark of the tensors allocated during
    the step (activations kept for backward, gradients, AdamW state created in this first step)."""
    static = common.static_bytes(variant.model.parameters(), variant.model.buffers())
    with common.TensorMemory() as mem:
        step()
    return {"static_mb": static / 2**20, "step_mb": mem.peak / 2**20, "peak_mb": (static + mem.peak) / 2**20}


def rss_child(args) -> None:
    """--_rss-child: build one method, run warm-up + one step, print peak RSS (MB) before/after."""
    torch.manual_seed(0)
    base, _ = common.load_base(args.model, DTYPES[args.dtype], args.device)
    batch = common.make_batch(base.config.vocab_size, args.batch_size, args.seq_len, args.device)
    variant = common.build_variant(args.methods, base, args.batch_size)
    step, _ = make_step(variant, batch)
    before = common.peak_rss_mb()
    step()
    step()
    print(json.dumps({"rss_before_mb": before, "peak_rss_mb": common.peak_rss_mb()}))


def bench_model(model_name: str, args, methods: list[str], warmup: int, steps: int, batch_size: int,
                seq_len: int) -> list[dict]:
    dtype, device = DTYPES[args.dtype], args.device
    t0 = time.perf_counter()
    base, _ = common.load_base(model_name, dtype, device)
    batch = common.make_batch(base.config.vocab_size, batch_size, seq_len, device)
    log(f"[{model_name}] loaded in {time.perf_counter() - t0:.1f}s; batch {batch_size} x {seq_len}, {args.dtype} on {device}")
    variants = {m: common.build_variant(m, base, batch_size) for m in methods}
    steps_fn, opts = {}, {}
    for m, v in variants.items():
        steps_fn[m], opts[m] = make_step(v, batch)
        log(f"  {m:10s} {v.config:55s} trainable {v.trainable_params:,d}")
    memory = {}
    if args.memory == "tensor":  # the first step of every method, under the tensor counter; it counts as a warm-up
        for m, v in variants.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            memory[m] = measure_memory(v, steps_fn[m])
            if device.startswith("cuda"):
                memory[m]["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        warmup = max(warmup - 1, 0)
    times = common.round_robin(steps_fn, warmup, steps, device, log=log if args.verbose else None, clock=args.clock)
    results = []
    for m, v in variants.items():
        row = {"model": model_name, "name": m, "config": v.config, "trainable_params": v.trainable_params,
               "clock": times.clock, "step_ms": 1000 * common.median(times[m]), "step_ms_all": [1000 * t for t in times[m]],
               "wall_ms": 1000 * common.median(times.wall[m]), "wall_ms_all": [1000 * t for t in times.wall[m]],
               "cpu_ms": 1000 * common.median(times.cpu[m]), "cpu_ms_all": [1000 * t for t in times.cpu[m]]}
        row.update(memory.get(m, {}))
        results.append(row)
    if args.memory == "rss":  # each method in a fresh process: peak resident set size
        for m in methods:
            out = common.run_subprocess([os.path.abspath(__file__), "--_rss-child", "--model", model_name,
                                         "--methods", m, "--batch-size", str(batch_size), "--seq-len", str(seq_len),
                                         "--device", device, "--dtype", args.dtype])
            rss = json.loads(out.strip().splitlines()[-1])
            next(r for r in results if r["name"] == m).update(peak_mb=rss["peak_rss_mb"], rss_before_mb=rss["rss_before_mb"])
    # ratios: step time to skillmix lora (median of the per-repetition paired ratios too), memory to lora
    ref = next((r for r in results if r["name"] == "lora"), None)
    peers = {"lora": "peft_lora", "poly": "peft_poly", "mhr": "peft_mhr"}
    for r in results:
        if ref is not None:
            r["ratio_to_lora"] = r["step_ms"] / ref["step_ms"]
            r["min_ratio_to_lora"] = min(r["step_ms_all"]) / min(ref["step_ms_all"])  # least-disturbed steps
            paired = [a / b for a, b in zip(r["step_ms_all"], ref["step_ms_all"])]
            r["paired_ratio_to_lora"] = common.median(paired)
            r["paired_ratio_to_lora_range"] = [min(paired), max(paired)] if paired else None
            if "peak_mb" in r and "peak_mb" in ref:
                r["peak_ratio_to_lora"] = r["peak_mb"] / ref["peak_mb"]
            if "step_mb" in r and "step_mb" in ref:
                r["step_mem_ratio_to_lora"] = r["step_mb"] / ref["step_mb"]
        peer = next((p for p in results if p["name"] == peers.get(r["name"])), None)
        if peer is not None:
            r["ratio_to_peft"] = r["step_ms"] / peer["step_ms"]
            r["min_ratio_to_peft"] = min(r["step_ms_all"]) / min(peer["step_ms_all"])
            paired = [a / b for a, b in zip(r["step_ms_all"], peer["step_ms_all"])]
            r["paired_ratio_to_peft"] = common.median(paired)
            r["paired_ratio_to_peft_range"] = [min(paired), max(paired)] if paired else None
    del variants, steps_fn, opts, base
    return results


def print_table(results: list[dict]) -> None:
    header = ["model", "method", "config", "trainable", "step ms", "x lora", "paired x lora", "x PEFT peer",
              "paired x PEFT", "wall ms", "peak MB", "x lora", "step-alloc MB", "x lora"]
    rows = []
    for r in results:
        f = lambda k, spec: format(r[k], spec) if k in r else "-"
        rows.append([r["model"], r["name"], r["config"], f"{r['trainable_params']:,d}", f("step_ms", ".1f"),
                     f("ratio_to_lora", ".3f"), f("paired_ratio_to_lora", ".3f"), f("ratio_to_peft", ".3f"),
                     f("paired_ratio_to_peft", ".3f"), f("wall_ms", ".1f"), f("peak_mb", ".1f"), f("peak_ratio_to_lora", ".3f"), f("step_mb", ".1f"),
                     f("step_mem_ratio_to_lora", ".3f")])
    print(common.fmt_table(rows, header))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny-llama,smollm2", help="comma list: tiny-llama, smollm2 (or a path)")
    p.add_argument("--methods", default=",".join(TIMING_ORDER),
                   help="comma list of " + ", ".join(ALL_METHODS) + " (timed in this cyclic order, rotated per repetition)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per method (default: tiny 3, others 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default: tiny 20, others 4)")
    p.add_argument("--memory", choices=("tensor", "rss", "none"), default="tensor")
    p.add_argument("--clock", choices=("cpu", "wall"), default=None,
                   help="clock of step_ms and the ratios: process CPU time (default on CPU) or wall time (GPU); "
                        "both are recorded in the JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads; default 1 on CPU (a shared 2-core machine: with 2 OpenMP threads a "
                        "step stalls whenever another process takes a core), torch's choice on GPU")
    p.add_argument("--quick", action="store_true",
                   help="smoke run in < 1 minute: tiny-llama 8 x 256 (2+5 steps), SmolLM2 2 x 64 (1+2 steps)")
    p.add_argument("--json", default=None, help="write {'results': [...], 'machine': ..., 'args': ...} here")
    p.add_argument("--verbose", action="store_true", help="log every step's time")
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--_rss-child", dest="rss_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in MATCHED]
    if unknown:
        p.error(f"unknown method(s) {unknown}; expected some of {', '.join(ALL_METHODS)}")
    machine = common.machine_info()
    log(f"machine: {machine}")
    results = []
    t_start = time.perf_counter()
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        tiny = model_name.startswith("tiny")
        bsz, seq, warm, steps = args.batch_size, args.seq_len, args.warmup, args.steps
        if warm is None:
            warm = 3 if tiny else 1
        if steps is None:
            steps = 20 if tiny else 4
        if args.quick:
            if tiny:
                warm, steps = 2, 5
            else:
                bsz, seq, warm, steps = 2, 64, 1, 2
        rows = bench_model(model_name, args, methods, warm, steps, bsz, seq)
        for r in rows:
            r.update(batch=f"{bsz}x{seq}", warmup=warm, timed_steps=steps)
        results += rows
    elapsed = time.perf_counter() - t_start
    clock = results[0]["clock"] if results else "-"
    common.finish(results, machine, args, elapsed, print_table,
                  f"; step ms = median {'process CPU' if clock == 'cpu' else 'wall'} time per step")


if __name__ == "__main__":
    main()
