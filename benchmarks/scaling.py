"""How the training-step cost grows with the number of experts/skills, the rank and the sequence length.

Model: SmolLM2-135M's geometry (hidden 576, 9 heads / 3 KV heads, MLP 1536) with 2 layers and a
1024-token vocabulary, random weights ("smollm2-2l"): every step is dominated by the transformer
layers, as in SmolLM2 itself, but takes well under a second, so the three sweeps finish in minutes.
Adapters on q_proj, v_proj. For every sweep point all variants share one base model and are timed
round-robin in one process (forward + backward + AdamW); the plot shows the median step time over
the reference LoRA's in the same sweep.

  experts/skills X (per-expert rank fixed): molora E=X r=2, molora_sd m=X r=4, mode m=X r=4 p=1,
                                            poly/mhr S=X r=2, orchmoe S=X r=2;  ratio to LoRA r=8
  rank r (X=4 fixed): molora E=4, molora_sd m=4, mode m=4 p=1, poly/mhr S=4, orchmoe S=4, and
                      LoRA r;  ratio to LoRA r=8
  sequence length T: the parameter-matched configs of common.MATCHED;  ratio to LoRA r=8 at the same T

    python benchmarks/scaling.py                       # writes docs/scaling.png and docs/scaling.json
    python benchmarks/scaling.py --quick
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("molora", "molora_sd", "mode", "poly", "mhr", "orchmoe")


def small_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=2048,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# The experts/skills sweep per method: (the config field that counts experts or skills, default r, fixed fields).
SWEEP = {
    "molora": ("num_experts", 2, {}),
    "molora_sd": ("num_experts", 4, {}),
    "mode": ("num_experts", 4, {"expert_rank": 1}),
    "poly": ("n_skills", 2, {}),
    "mhr": ("n_skills", 2, {}),
    "orchmoe": ("n_skills", 2, {}),
}


def expert_config(method: str, x: int, r: int | None = None) -> dict:
    count_field, default_r, fixed = SWEEP[method]
    return {count_field: x, "r": r or default_r, **fixed}


def run_point(base, variants: dict[str, tuple[str, dict]], bsz: int, seq: int, warmup: int, steps: int) -> dict[str, float]:
    """variants: label -> (method, config overrides). Returns label -> median step ms."""
    batch = common.make_batch(base.config.vocab_size, bsz, seq)
    fns = {}
    for label, (method, kw) in variants.items():
        if common.LAYERS[method].uses_task_ids:
            kw = {**kw, "n_tasks": common.N_TASKS}
        v = common.build_variant(method, base, bsz, **kw)
        v.model.train()
        opt = torch.optim.AdamW([p for p in v.model.parameters() if p.requires_grad], lr=1e-4)

        def step(v=v, opt=opt):
            opt.zero_grad(set_to_none=True)
            v.model(**batch, **v.extra_inputs).loss.backward()
            opt.step()
        fns[label] = step
    times = common.round_robin(fns, warmup, steps)
    return {k: 1000 * common.median(t) for k, t in times.items()}


def layer_point(variants: dict[str, tuple[str, dict]], bsz: int, seq: int, reps: int) -> dict[str, float]:
    """Adapter-only cost of one adapted q_proj (576 -> 576), forward + backward, fast path: label -> ms
    over the bare base layer (all layers share one frozen base and are timed round-robin)."""
    from layer_time import build_layers, time_layers

    layers = {}
    base = None
    for label, (method, kw) in variants.items():
        built = build_layers([method], 576, 576, bsz, overrides={method: kw}, reference=False)
        if base is None:
            base = built["base"]
            layers["base"] = base
        layer = built[f"{method}:fast"]
        layer.base_layer = base
        layers[label] = layer
    torch.manual_seed(0)
    x = torch.randn(bsz, seq, 576, requires_grad=True)
    grad = torch.randn(bsz, seq, 576)
    ms = time_layers(layers, x, grad, 3, reps)
    return {k: v - ms["base"] for k, v in ms.items() if k != "base"} | {"base": ms["base"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="fewer points, 2 timed steps")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "scaling.png"))
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "scaling.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    xs, ranks, seqs = [1, 2, 4, 8, 16], [1, 2, 4, 8, 16], [64, 128, 256, 512, 1024]
    if args.quick:
        xs, ranks, seqs, args.steps = [1, 4, 16], [2, 8], [64, 256], 2
    base = small_model()
    t0 = time.perf_counter()
    out = {"experts": {}, "rank": {}, "seq_len": {}}
    bsz, seq, w, n = args.batch_size, args.seq_len, args.warmup, args.steps

    variants = {"lora": ("lora", dict(r=8))}
    variants.update({f"{m}@{x}": (m, expert_config(m, x)) for m in METHODS for x in xs})
    ms = run_point(base, variants, bsz, seq, w, n)
    out["experts"] = {"x": xs, "lora_ms": ms["lora"],
                      **{m: [ms[f"{m}@{x}"] / ms["lora"] for x in xs] for m in METHODS}}
    print(f"experts sweep done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)

    variants = {"lora": ("lora", dict(r=8))}
    variants.update({f"lora@{r}": ("lora", dict(r=r)) for r in ranks if r != 8})
    variants.update({f"{m}@{r}": (m, expert_config(m, 4, r)) for m in METHODS for r in ranks})
    ms = run_point(base, variants, bsz, seq, w, n)
    out["rank"] = {"x": ranks, "lora_ms": ms["lora"],
                   "lora": [ms["lora" if r == 8 else f"lora@{r}"] / ms["lora"] for r in ranks],
                   **{m: [ms[f"{m}@{r}"] / ms["lora"] for r in ranks] for m in METHODS}}
    print(f"rank sweep done ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)

    out["seq_len"] = {"x": seqs, "lora_ms": [], **{m: [] for m in METHODS}}
    for t in seqs:
        variants = {"lora": ("lora", dict(r=8))}
        variants.update({m: (m, {}) for m in METHODS})
        ms = run_point(base, variants, bsz, t, w, n)
        out["seq_len"]["lora_ms"].append(ms["lora"])
        for m in METHODS:
            out["seq_len"][m].append(ms[m] / ms["lora"])
    elapsed = time.perf_counter() - t0
    print(f"seq-len sweep done ({elapsed:.0f}s)", file=sys.stderr)

    # the same sweeps for one adapted layer: adapter cost only (time over the bare base layer)
    lay = {"experts": {}, "rank": {}, "seq_len": {}}
    lreps = 10 if args.quick else 30
    variants = {"lora": ("lora", dict(r=8))}
    variants.update({f"{m}@{x}": (m, expert_config(m, x)) for m in METHODS for x in xs})
    ms = layer_point(variants, 8, seq, lreps)
    lay["experts"] = {"x": xs, "lora_ms": ms["lora"], "base_ms": ms["base"],
                      **{m: [ms[f"{m}@{x}"] / ms["lora"] for x in xs] for m in METHODS}}
    variants = {"lora": ("lora", dict(r=8))}
    variants.update({f"lora@{r}": ("lora", dict(r=r)) for r in ranks if r != 8})
    variants.update({f"{m}@{r}": (m, expert_config(m, 4, r)) for m in METHODS for r in ranks})
    ms = layer_point(variants, 8, seq, lreps)
    lay["rank"] = {"x": ranks, "lora_ms": ms["lora"], "base_ms": ms["base"],
                   "lora": [ms["lora" if r == 8 else f"lora@{r}"] / ms["lora"] for r in ranks],
                   **{m: [ms[f"{m}@{r}"] / ms["lora"] for r in ranks] for m in METHODS}}
    lay["seq_len"] = {"x": seqs, "lora_ms": [], "base_ms": [], **{m: [] for m in METHODS}}
    for t in seqs:
        variants = {"lora": ("lora", dict(r=8))}
        variants.update({m: (m, {k: v for k, v in common.MATCHED[m].items()}) for m in METHODS})
        ms = layer_point(variants, 8, t, lreps)
        lay["seq_len"]["lora_ms"].append(ms["lora"])
        lay["seq_len"]["base_ms"].append(ms["base"])
        for m in METHODS:
            lay["seq_len"][m].append(ms[m] / ms["lora"])
    elapsed = time.perf_counter() - t0
    print(f"layer sweeps done ({elapsed:.0f}s)", file=sys.stderr)

    machine = common.machine_info()
    meta = {"model": "smollm2-2l (SmolLM2-135M geometry, 2 layers, vocab 1024, random weights)",
            "batch_size": bsz, "seq_len": seq, "warmup": w, "steps": n, "threads": args.threads,
            "machine": machine, "elapsed_s": elapsed,
            "configs": {"experts": {m: expert_config(m, "X") for m in METHODS},
                        "rank": {m: expert_config(m, 4, "r") for m in METHODS},
                        "seq_len": {m: common.MATCHED[m] for m in ("lora", *METHODS)}}}
    meta["layer"] = "one adapted Linear(576, 576), x [8, T, 576] (T = --seq-len except in the T sweep), fwd+bwd, " \
                    f"median of {lreps}; value = adapter time over the bare base layer / LoRA r=8's"
    with open(args.json, "w") as f:
        json.dump({"sweeps": out, "layer_sweeps": lay, "meta": meta}, f, indent=1)
    for title, group in (("training step, smollm2-2l", out), ("one adapted layer, adapter cost only", lay)):
        for name, sweep in group.items():
            rows = [[m] + [f"{v:.3f}" for v in sweep[m]] for m in (("lora",) if name == "rank" else ()) + METHODS]
            ref = sweep["lora_ms"]
            ref = f"{ref:.1f}" if isinstance(ref, float) else ", ".join(f"{v:.1f}" for v in ref)
            print(f"\n{title}: {name} (ratio to LoRA r=8; LoRA r=8: {ref} ms)")
            print(common.fmt_table(rows, ["method"] + [str(x) for x in sweep["x"]]))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.4))
    colors = {m: f"C{i}" for i, m in enumerate(("lora",) + METHODS)}
    titles = {"experts": "experts / skills X (per-expert rank fixed)", "rank": "rank r per expert (X = 4)",
              "seq_len": "sequence length T (parameter-matched configs)"}
    ylabels = ("training step / LoRA r=8's", "adapter cost / LoRA r=8's")
    for row, group in enumerate((out, lay)):
        for ax, (name, sweep) in zip(axes[row], group.items()):
            for m in (("lora",) if name == "rank" else ()) + METHODS:
                ax.plot(sweep["x"], sweep[m], marker="o", label=m, color=colors[m])
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sweep["x"], [str(x) for x in sweep["x"]])
            ax.set_title(("step, smollm2-2l: " if row == 0 else "one q_proj layer: ") + titles[name], fontsize=9)
            ax.set_ylabel(ylabels[row])
            ax.grid(alpha=0.3)
        axes[row][1].legend(fontsize=8)
    fig.suptitle(f"Top: training step (fwd+bwd+AdamW), smollm2-2l, batch {bsz} x {seq} (T sweep: {bsz} x T), median of {n} "
                 f"steps. Bottom: one adapted Linear(576, 576), x [8, {seq}, 576] (T sweep: 8 x T), fwd+bwd, adapter time "
                 f"over the bare layer.\n{machine['cpu']}, {args.threads} thread(s), process CPU time, round-robin",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} and {args.json} ({elapsed:.0f}s)", file=sys.stderr)


if __name__ == "__main__":
    main()
