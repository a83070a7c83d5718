"""Shared pieces of the benchmarks: base models, parameter-matched method configs, timing and memory.

Not part of the library or of the test suite. Every benchmark builds ONE base model and gives
every method its own module tree that shares the frozen base weights (``share_base``), so all
methods live in one process at once and can be timed round-robin.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from skillmix import LAYERS, METHODS, SkillMixConfig, get_model
from skillmix.hub import load_base_model

SKILLMIX_METHODS = METHODS
# PEFT's implementations timed next to their skillmix counterparts: name -> (skillmix method, PEFT config class)
PEFT_VARIANTS = {"peft_lora": ("lora", "LoraConfig"), "peft_poly": ("poly", "PolyConfig"), "peft_mhr": ("mhr", "PolyConfig")}
PEFT_METHODS = tuple(PEFT_VARIANTS)
ALL_METHODS = SKILLMIX_METHODS + PEFT_METHODS
# Timing order: each PEFT method next to its skillmix counterpart. The round-robin rotates this order
# cyclically, so the two always run back to back and their paired ratio sees the same machine state.
TIMING_ORDER = ("lora", "peft_lora", "molora", "molora_sd", "mode", "orchmoe", "poly", "peft_poly", "mhr", "peft_mhr")
MODELS = {"tiny-llama": "tiny-llama", "smollm2": "SmolLM2-135M-Instruct"}
N_TASKS = 8  # rows of Poly/MHR's allocation table in the benchmarks

# Parameter-matched configurations: trainable parameters close to LoRA r=8 on q_proj, v_proj
# (per adapted layer d_in=P, d_out=Q; LoRA r=8 has 8(P+Q)). See docs/performance.md for the counts.
#   molora    E=4, r=2   : 8(P+Q) + 4P            (same adapter rank E*r = 8 as LoRA, plus the router)
#   molora_sd m=2, r=5   : 5P + 10Q + 2P
#   mode      m=2, r=3, p=1 (rank-one experts): 3P + 6Q + 6P
#   poly/mhr  S=4, r=2   : 8(P+Q) + n_tasks*h*S
#   orchmoe   S=4, r=2, N=4 : 8(P+Q) + N*S per layer + the task router d_model*d_k + N*d_k
MATCHED: dict[str, dict[str, Any]] = {
    "lora": dict(r=8),
    "molora": dict(num_experts=4, r=2),
    "molora_sd": dict(num_experts=2, r=5),
    "mode": dict(num_experts=2, r=3, expert_rank=1),
    "poly": dict(n_skills=4, r=2, n_tasks=N_TASKS),
    "mhr": dict(n_skills=4, r=2, n_tasks=N_TASKS, n_splits=4),
    "orchmoe": dict(n_skills=4, r=2, n_abstract_tasks=4),
    "peft_lora": dict(r=8),
    "peft_poly": dict(n_skills=4, r=2, n_tasks=N_TASKS, n_splits=1),
    "peft_mhr": dict(n_skills=4, r=2, n_tasks=N_TASKS, n_splits=4),
}


# ---------------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    try:
        import peft
        import transformers

        info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------- models
def load_base(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) for 'tiny-llama' or 'smollm2' (or any path/hub id skillmix.hub accepts)."""
    model, tok, _ = load_base_model(MODELS.get(name, name), dtype=dtype, device=device)
    model = model.to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.requires_grad_(False)
            # Own memory for every weight (from_pretrained may leave them memory-mapped from the file):
            # merged variants get copies of the weights, and decoding is bound by reading the weights,
            # so base and copies must read from the same kind of memory to be comparable.
            p.data = p.data.clone()
    return model, tok


def share_base(base: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree whose parameters ARE the base's parameters (no weight copy)."""
    memo = {id(p): p for p in base.parameters()}
    return copy.deepcopy(base, memo)


def skillmix_config(method: str, **overrides) -> SkillMixConfig:
    kwargs = dict(MATCHED[method])
    kwargs.update(overrides)
    return SkillMixConfig(method=method, **kwargs)


def peft_config(name: str, init_nonzero: bool = False, **overrides):
    """The PEFT config of a PEFT variant (LoRA with alpha = r, as skillmix's default scaling 1)."""
    import peft

    config_cls = getattr(peft, PEFT_VARIANTS[name][1])
    kwargs = dict(MATCHED[name])
    kwargs.update(overrides)
    targets = kwargs.pop("target_modules", ["q_proj", "v_proj"])
    if config_cls is peft.LoraConfig:
        kwargs.update(lora_alpha=kwargs["r"], lora_dropout=0.0, init_lora_weights=not init_nonzero)
    else:
        kwargs.update(init_weights=not init_nonzero)
    return config_cls(task_type="CAUSAL_LM", target_modules=targets, **kwargs)


def peft_uses_task_ids(name: str) -> bool:
    """A PEFT variant takes task_ids when its skillmix counterpart routes by task id."""
    return LAYERS[PEFT_VARIANTS[name][0]].uses_task_ids


def describe(name: str, **overrides) -> str:
    kw = dict(MATCHED[name])
    kw.update(overrides)
    return ", ".join(f"{k}={v}" for k, v in kw.items())


@dataclass
class Variant:
    """One model under test: how to call it, its trainable parameters."""

    name: str
    model: torch.nn.Module
    extra_inputs: dict[str, Any] = field(default_factory=dict)  # task_ids for poly/mhr
    config: str = ""

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def build_variant(name: str, base: torch.nn.Module, batch_size: int, init_nonzero: bool = True,
                  seed: int = 0, **overrides) -> Variant:
    """A skillmix or PEFT model on a weight-sharing copy of `base`. init_nonzero: B not zero (realistic routing)."""
    torch.manual_seed(seed)
    device = next(base.parameters()).device
    task_ids = torch.arange(batch_size, device=device) % N_TASKS
    if name in PEFT_VARIANTS:
        from peft import get_peft_model

        model = get_peft_model(share_base(base), peft_config(name, init_nonzero=init_nonzero, **overrides))
        extra = {"task_ids": task_ids} if peft_uses_task_ids(name) else {}
    else:
        cfg = skillmix_config(name, init_weights=not init_nonzero, **overrides)
        model = get_model(share_base(base), cfg)
        extra = {"task_ids": task_ids} if cfg.uses_task_ids else {}
    return Variant(name, model, extra, describe(name, **overrides))


def make_batch(vocab_size: int, batch_size: int, seq_len: int, device="cpu", seed: int = 1) -> dict[str, torch.Tensor]:
    """Random token ids; the first half of each row is the prompt (labels -100), the rest the target."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=g)
    labels = ids.clone()
    labels[:, : seq_len // 2] = -100
    mask = torch.ones_like(ids)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# ---------------------------------------------------------------------------------------------- timing
def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Timings(dict):
    """name -> list of seconds on the primary clock; `.wall` and `.cpu` hold both clocks."""

    def __init__(self, names, clock: str):
        super().__init__({n: [] for n in names})
        self.clock = clock
        self.wall: dict[str, list[float]] = {n: [] for n in names}
        self.cpu: dict[str, list[float]] = {n: [] for n in names}


def default_clock(device) -> str:
    """'cpu' (process CPU time) on CPU, 'wall' on GPU.

    On a shared CPU machine a single-threaded step's wall time also counts the time the process
    waited for a core taken by someone else; its CPU time (user + sys, time.process_time) does not,
    so CPU-time ratios between methods are far less noisy. On a GPU only wall time means anything.
    """
    return "wall" if str(device).startswith("cuda") else "cpu"


def round_robin(fns: dict[str, Callable[[], None]], warmup: int, reps: int, device="cpu",
                log: Callable[[str], None] | None = None, clock: str | None = None) -> Timings:
    """Call every fn once per repetition (order rotated each repetition); seconds of the timed repetitions."""
    names = list(fns)
    times = Timings(names, clock or default_clock(device))
    for rep in range(warmup + reps):
        k = rep % len(names)
        order = names[k:] + names[:k]
        for n in order:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fns[n]()
            sync(device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if rep >= warmup:
                times.wall[n].append(dt)
                times.cpu[n].append(dc)
                times[n].append(dt if times.clock == "wall" else dc)
            if log:
                log(f"  rep {rep}{' (warm-up)' if rep < warmup else ''} {n}: wall {dt * 1000:.1f} ms, cpu {dc * 1000:.1f} ms")
    return times


# ---------------------------------------------------------------------------------------------- memory
class TensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages created while active (CPU or GPU; no allocator needed).

    Every op output's storage is counted once when it first appears and released by a weakref
    finalizer when the storage dies, so `peak` is the high-water mark of tensor memory allocated
    during the block (activations saved for backward, gradients, optimizer temporaries). Kernel-internal
    scratch buffers that never become tensors are not seen.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._seen: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                try:
                    st = t.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
                key = id(st)
                if key in self._seen:
                    continue
                nbytes = st.nbytes()
                self._seen[key] = nbytes
                self.current += nbytes
                self.peak = max(self.peak, self.current)
                weakref.finalize(st, self._release, key, nbytes)
        return out


def static_bytes(*tensor_groups) -> int:
    """Bytes of the distinct storages among the given tensors (weights, buffers, optimizer state)."""
    seen, total = set(), 0
    for group in tensor_groups:
        for t in group:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key in seen or st.nbytes() == 0:
                continue
            seen.add(key)
            total += st.nbytes()
    return total


def optimizer_tensors(opt: torch.optim.Optimizer):
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                yield v


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_subprocess(args: list[str]) -> str:
    return subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True).stdout


def write_results(path: str, results: list[dict], machine: dict, args, elapsed: float) -> None:
    """The benchmark's --json file: {"results", "machine", "args", "elapsed_s"}."""
    with open(path, "w") as f:
        json.dump({"results": results, "machine": machine, "args": vars(args), "elapsed_s": elapsed}, f, indent=1)
    print(f"wrote {path}", file=sys.stderr, flush=True)


def finish(results: list[dict], machine: dict, args, elapsed: float, print_table, note: str = "") -> None:
    """A benchmark's closing lines: the machine, the table, and the --json file when asked for."""
    print(f"\nmachine: {machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads), "
          f"torch {machine['torch']}, {args.dtype} on {args.device}; total {elapsed:.0f}s{note}")
    print_table(results)
    if args.json:
        write_results(args.json, results, machine, args, elapsed)


def fmt_table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])
