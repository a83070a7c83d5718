"""Forward + backward time of ONE adapted linear layer, fused fast path vs the reference computation.

The layer wraps a frozen nn.Linear(d_in, d_out) (default: SmolLM2-135M's q_proj, 576 -> 576) and
sees x [B, T, d_in] that requires grad, as inside a model. For every method two layers with the same
weights are timed round-robin in one process: `fast` (the library's fused path) and `ref` (the
reference `delta(x)` computation: materialise delta, scale, add), plus the bare base layer; the
column "adapter ms" is the time over the bare base layer.

    python benchmarks/layer_time.py                       # parameter-matched configs, 8 x 256
    python benchmarks/layer_time.py --d-out 192           # SmolLM2's v_proj
    python benchmarks/layer_time.py --json layer.json
"""
from __future__ import annotations

import argparse
import json

import torch

import common
from skillmix.layers import LAYERS
from skillmix.routing import RoutingContext


class _PeftLayer(torch.nn.Module):
    """A PEFT-wrapped Linear called like a skillmix layer (task ids passed as PEFT's Poly layer takes them)."""

    def __init__(self, layer, task_ids=None):
        super().__init__()
        self.layer, self.task_ids = layer, task_ids

    def forward(self, x):
        return self.layer(x) if self.task_ids is None else self.layer(x, task_ids=self.task_ids)


def build_peft_layer(name: str, base: torch.nn.Module, bsz: int) -> torch.nn.Module:
    """PEFT's LoRA / Poly / MHR Linear around `base` (shared, frozen), same config as the step benchmark."""
    from peft import inject_adapter_in_model

    holder = torch.nn.Module()
    holder.q_proj = base
    cfg = common.peft_config(name, init_nonzero=True, target_modules=["q_proj"])
    torch.manual_seed(1)
    inject_adapter_in_model(cfg, holder)
    task_ids = torch.arange(bsz) % common.N_TASKS if common.peft_uses_task_ids(name) else None
    return _PeftLayer(holder.q_proj, task_ids).train()


def build_layers(methods, d_in, d_out, bsz, overrides=None, reference=True):
    ctx = RoutingContext()
    ctx.task_ids = torch.arange(bsz) % common.N_TASKS
    ctx.task_weights = torch.softmax(torch.randn(bsz, 4, generator=torch.Generator().manual_seed(3)), -1)
    base = torch.nn.Linear(d_in, d_out, bias=False)
    base.weight.requires_grad_(False)
    layers = {"base": base}
    for m in methods:
        if m in common.PEFT_VARIANTS:
            layers[m] = build_peft_layer(m, base, bsz)
            continue
        cfg = common.skillmix_config(m, init_weights=False, target_modules=["x"], **(overrides or {}).get(m, {}))
        for variant in ("fast", "ref") if reference else ("fast",):
            torch.manual_seed(1)
            layer = LAYERS[m](base, cfg, ctx, m).train()
            layer.use_fast_path = variant == "fast"  # "ref": the plain reference computation
            layers[f"{m}:{variant}"] = layer
    return layers


def time_layers(layers, x, grad, warmup, reps):
    def fn(layer):
        def f():
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(x).backward(grad)
        return f
    times = common.round_robin({k: fn(v) for k, v in layers.items()}, warmup, reps)
    return {k: 1000 * common.median(v) for k, v in times.items()}


def time_decode(layers, x, warmup, reps):
    """Eval + no-grad calls on one token (a decoding step); microseconds per call."""
    for layer in layers.values():
        layer.eval()
    with torch.no_grad():
        times = common.round_robin({k: (lambda v=v: v(x)) for k, v in layers.items()}, warmup, reps)
    return {k: 1e6 * common.median(v) for k, v in times.items()}


def profile_layers(layers, x, grad, reps: int = 10, rows: int = 12) -> None:
    """torch.profiler table (ops grouped by input shape) of `reps` forward+backward calls per layer."""
    from torch.profiler import ProfilerActivity, profile

    for name, layer in layers.items():
        def f():
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(x).backward(grad)
        for _ in range(3):
            f()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(reps):
                f()
        events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) / reps / 1000
        table = [[e.key, str(e.input_shapes)[:60], f"{e.count / reps:g}", f"{e.self_cpu_time_total / reps / 1000:.2f}"]
                 for e in events[:rows] if e.self_cpu_time_total / reps > 20]
        print(f"\n{name}: per forward+backward (mean of {reps}), self CPU total {total:.2f} ms")
        print(common.fmt_table(table, ["op", "input shapes", "calls", "self ms"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(common.ALL_METHODS),
                   help="skillmix methods (timed on the fast and the reference path) and peft_lora/peft_poly/peft_mhr")
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--d-out", type=int, default=576)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--decode", action="store_true",
                   help="time eval/no-grad calls on x [1, 1, d_in] (one decoding step; 500 calls) instead")
    p.add_argument("--profile", action="store_true", help="print torch.profiler op tables instead of timing")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    torch.manual_seed(0)
    if args.decode:
        layers = build_layers(methods, args.d_in, args.d_out, 1)
        us = time_decode(layers, torch.randn(1, 1, args.d_in), 50, 500)
        rows = [[k, f"{v:.1f}", f"{v - us['base']:.1f}"] for k, v in us.items()]
        print(f"one adapted Linear({args.d_in}, {args.d_out}), eval, no grad, x [1, 1, {args.d_in}], median of 500 calls")
        print(common.fmt_table(rows, ["layer:path", "us / call", "over base us"]))
        return
    x = torch.randn(args.batch_size, args.seq_len, args.d_in, requires_grad=True)
    grad = torch.randn(args.batch_size, args.seq_len, args.d_out)
    layers = build_layers(methods, args.d_in, args.d_out, args.batch_size)
    if args.profile:
        profile_layers(layers, x, grad)
        return
    ms = time_layers(layers, x, grad, args.warmup, args.reps)
    base = ms["base"]
    rows, results = [], []
    for m in methods:
        if m in common.PEFT_VARIANTS:
            results.append({"name": m, "config": common.describe(m), "fast_ms": ms[m], "base_ms": base,
                            "fast_adapter_ms": ms[m] - base})
            rows.append([m, common.describe(m), f"{base:.2f}", "-", "-", f"{ms[m]:.2f}", f"{ms[m] - base:.2f}", "-"])
            continue
        fast, ref = ms[f"{m}:fast"], ms[f"{m}:ref"]
        results.append({"name": m, "config": common.describe(m), "fast_ms": fast, "ref_ms": ref, "base_ms": base,
                        "fast_adapter_ms": fast - base, "ref_adapter_ms": ref - base})
        rows.append([m, common.describe(m), f"{base:.2f}", f"{ref:.2f}", f"{ref - base:.2f}", f"{fast:.2f}",
                     f"{fast - base:.2f}", f"{(fast - base) / (ref - base):.2f}"])
    m = common.machine_info()
    print(f"one adapted Linear({args.d_in}, {args.d_out}), x [{args.batch_size}, {args.seq_len}, {args.d_in}], "
          f"forward+backward, median of {args.reps}; {m['cpu']}, {args.threads} thread(s), torch {m['torch']}")
    print(common.fmt_table(rows, ["method", "config", "base ms", "ref ms", "ref adapter ms", "fast ms",
                                  "fast adapter ms", "fast/ref adapter"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "machine": m, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
