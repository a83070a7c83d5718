"""The task router on a synthetic multi-task problem where training can be watched step by step (tiny random Llama).

Four tasks, each a different permutation of the same 10 input tokens; a prompt is 4 task-marker tokens and the
input token, the target the permuted token. A single LoRA (r = 4) and OrchMoE (N = S = 4, r = 1: the same rank
in total) are adapted on the first block's MLP only, where the frozen base carries the task marker weakly.
Printed per variant: (step, loss on all prompts, NMI of argmax w against the task) every 100 steps. An
exploration, not a test (docs/routers.md says what it showed).

    python benchmarks/router_synthetic.py [--steps 400]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from skillmix import SkillMixConfig, get_model
from skillmix.metrics import nmi
from skillmix.train import parameter_groups

TARGETS = r"model\.layers\.0\.mlp\.(gate|up|down)_proj"


def base_model(seed: int = 0) -> LlamaForCausalLM:
    """A tiny random Llama whose LM head can express confident predictions (initializer_range 0.3; at
    transformers' 0.02 the logits of a 32-wide model cannot leave ~uniform, whatever the adapter does)."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()


def make_data(n_tasks: int = 4, per_task: int = 64, seed: int = 0):
    """(input_ids [n, 6], labels [n, 6], task [n]): 4 marker tokens, the input x, then the target perm_task(x)."""
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(10, generator=g) for _ in range(n_tasks)]
    ids, labels, tasks = [], [], []
    for t in range(n_tasks):
        for _ in range(per_task):
            x = int(torch.randint(10, (1,), generator=g))
            y = 10 + int(perms[t][x])
            ids.append([40 + 4 * t + j for j in range(4)] + [10 + x, y])
            labels.append([-100] * 5 + [y])
            tasks.append(t)
    return torch.tensor(ids), torch.tensor(labels), torch.tensor(tasks)


def run(fields: dict, steps: int, lr: float = 1e-2, router_lr: float | None = None, kmeans: bool = True,
        seed: int = 0, every: int = 100) -> list[tuple]:
    """Train one adapter with AdamW on batches of 32; [(step, loss on all prompts, probe NMI or None)]."""
    ids, labels, tasks = make_data()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    torch.manual_seed(seed)
    model = get_model(base_model(), SkillMixConfig(target_modules=TARGETS, **fields)).train()
    model.fit_task_router([batch], kmeans=kmeans, seed=seed)
    optimizer = torch.optim.AdamW(parameter_groups(model, router_lr), lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    history = []
    for step in range(steps + 1):
        if step % every == 0:
            with torch.no_grad():
                model.eval()
                loss = model(**batch).loss.item()
                w = model.compute_task_weights(**batch) if model.task_router is not None else None
                model.train()
            history.append((step, round(loss, 3), None if w is None else round(nmi(tasks.tolist(), w.argmax(-1).tolist()), 3)))
        if step == steps:
            break
        idx = torch.randperm(len(ids), generator=order)[:32]
        out = model(input_ids=ids[idx], attention_mask=torch.ones_like(ids[idx]), labels=labels[idx])
        (out.loss + model.aux_loss()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--json", default=str(Path(__file__).resolve().parents[1] / "results" / "routers" / "synthetic.json"))
    args = parser.parse_args()
    orchmoe = dict(method="orchmoe", r=1, n_skills=4, n_abstract_tasks=4, router_dim=8)
    results = {"lora r=4": run(dict(method="lora", r=4), args.steps)}
    print("lora r=4", results["lora r=4"])
    for name, fields, options in [("fitted router, router lr = lr", {}, {}),
                                  ("fitted router, router lr 1e-4", {}, dict(router_lr=1e-4)),
                                  ("fitted router, load balancing 0.1", {"load_balancing_coef": 0.1}, {}),
                                  ("random keys", {}, dict(kmeans=False)),
                                  ("first version", dict(router_scoring="dot", allocation_init="poly"), dict(kmeans=False))]:
        results[name] = run({**orchmoe, **fields}, args.steps, **options)
        print(name, results[name])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"steps": args.steps, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
