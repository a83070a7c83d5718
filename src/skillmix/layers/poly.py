"""Poly, as PEFT implements it: per-task allocation over S skills, A and B mixed separately.

w_t = normalise(GumbelSigmoid(theta_t)) in training, normalise(sigmoid(theta_t)) in eval, per head;
A_t = sum_s w_ts A_s, B_t = sum_s w_ts B_s per head block; delta(x) = s * x A_t B_t (s = 1/r by default).
With n_splits = h > 1 each of h blocks of A's input rows and B's output columns is routed separately:
that is MHR (`mhr.py`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SkillMixError
from ..routing import normalise_rows, relaxed_bernoulli
from .base import AdapterLayer, init_uniform_


class PolyLayer(AdapterLayer):
    routing = "sequence"
    uses_task_ids = True
    routing_parameters = ("allocation_logits",)
    per_task_parameters = ("allocation_logits",)

    @classmethod
    def check_config(cls, config) -> tuple[str, str] | None:
        if config.n_splits != 1:
            return "n_splits", "1 for poly (use method='mhr' for several heads)"
        return None

    @classmethod
    def default_scaling(cls, config) -> float:
        return 1.0 / config.r  # as PEFT's Poly

    @classmethod
    def export_routing(cls, config, task_id=None, task_weights=None) -> dict:
        if task_id is None or not 0 <= int(task_id) < config.n_tasks:
            raise SkillMixError(f"export_lora(task_id=...): expected an integer in [0, {config.n_tasks}) for "
                                f"{config.method!r}, got {task_id!r}")
        return {"task_id": int(task_id)}

    def reset_parameters(self, config) -> None:
        h, s, r = config.n_splits, config.n_skills, self.r
        if self.in_features % h or self.out_features % h:
            raise SkillMixError(
                f"{self.name}: n_splits={h} must divide d_in={self.in_features} and d_out={self.out_features}")
        self.n_splits, self.n_skills, self.n_tasks = h, s, config.n_tasks
        self.temperature = config.gumbel_temperature
        self.lora_A = nn.Parameter(init_uniform_(torch.empty(h, s, self.in_features // h, r), self.in_features // h))
        self.lora_B = nn.Parameter(torch.zeros(h, s, r, self.out_features // h))  # [h, S, r, d_out/h]
        if not config.init_weights:
            init_uniform_(self.lora_B.data, r)
        self.allocation_logits = nn.Parameter(torch.empty(config.n_tasks, h * s).uniform_(-1e-3, 1e-3))  # [n_tasks, h*S]

    def set_gumbel_temperature(self, temperature: float) -> None:
        self.temperature = float(temperature)

    def eval_allocation(self) -> torch.Tensor:
        """sigmoid(Theta) as [n_tasks, h, S]."""
        return torch.sigmoid(self.allocation_logits).view(self.n_tasks, self.n_splits, self.n_skills)

    @torch.no_grad()
    def add_task_rows(self, n: int) -> None:
        """Append `n` allocation rows, each the mean of the trained rows (`mean_allocation_logits`)."""
        logits = self.allocation_logits
        row = mean_allocation_logits(logits.view(self.n_tasks, self.n_splits, self.n_skills)).reshape(1, -1)
        grown = torch.cat([logits.detach(), row.to(logits).expand(n, -1)])
        self.allocation_logits = nn.Parameter(grown, requires_grad=logits.requires_grad)
        self.n_tasks += n

    @torch.no_grad()
    def keep_task_rows(self, n_tasks: int) -> None:
        """Keep only the first `n_tasks` allocation rows (undoes `add_task_rows`)."""
        logits = self.allocation_logits
        self.allocation_logits = nn.Parameter(logits.detach()[:n_tasks].clone(), requires_grad=logits.requires_grad)
        self.n_tasks = n_tasks

    def skill_weights(self, task_ids: torch.Tensor) -> torch.Tensor:
        """task_ids [B] -> normalised skill weights [B, h, S]."""
        checked = self.context.cache.get("poly.checked_task_ids")
        if checked is None or checked[0] is not task_ids or checked[1] != task_ids._version or checked[2] != self.n_tasks:
            if task_ids.max().item() >= self.n_tasks or task_ids.min().item() < 0:
                raise SkillMixError(f"task_ids must lie in [0, n_tasks={self.n_tasks}), got {task_ids.tolist()}")
            self.context.cache["poly.checked_task_ids"] = (task_ids, task_ids._version, self.n_tasks)  # once per forward
        logits = self.allocation_logits[task_ids.to(self.allocation_logits.device)]
        logits = logits.view(-1, self.n_splits, self.n_skills)
        return normalise_rows(relaxed_bernoulli(logits, self.temperature, self.training))

    def mixed_factors(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """weights [B, h, S] -> per-example A [B, d_in, r] and B [B, r, d_out]."""
        bsz = weights.shape[0]
        a = torch.einsum("bhs,hsdr->bhdr", weights, self.lora_A).reshape(bsz, self.in_features, self.r)
        b = torch.einsum("bhs,hsrd->bhrd", weights, self.lora_B).transpose(1, 2).reshape(bsz, self.r, self.out_features)
        return a, b

    def routed_factors(self, batch_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (A, B) for the context's task ids; recorded; computed once per layer while generating."""
        ctx = self.context
        if ctx.task_ids is None:
            raise SkillMixError("method 'poly'/'mhr' needs task_ids (LongTensor [B]) in forward/generate")

        def compute():
            weights = self.skill_weights(ctx.per_example(ctx.task_ids, batch_size))
            return weights, *self.mixed_factors(weights.to(dtype))

        if self.training:
            weights, a, b = compute()
        else:
            key = (ctx.task_ids, ctx.task_ids._version, batch_size, dtype, self.allocation_logits._version,
                   self.lora_A._version, self.lora_B._version)
            weights, a, b = ctx.cached(self.name, key, compute)
        ctx.record[self.name] = weights.detach()
        return a, b

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.routed_factors(x.shape[0], x.dtype)
        return self.dropout(x).bmm(a).bmm(b) * self.scaling

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = x.unsqueeze(1) if x.dim() == 2 else x
        a, b = self.routed_factors(x3.shape[0], x3.dtype)
        result = self.base_layer(x3)  # [B, T, d_out]; B A accumulated into it per example (baddbmm)
        out = self.accumulate_(result, self.dropout(x3).bmm(a), b, self.scaling)
        return out.squeeze(1) if x.dim() == 2 else out

    def lora_factors(self, task_id: int, **_) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([task_id], device=self.allocation_logits.device)
        training, self.training = self.training, False
        try:
            a, b = self.mixed_factors(self.skill_weights(ids))
        finally:
            self.training = training
        return a[0].T, b[0].T * self.scaling


@torch.no_grad()
def mean_allocation_logits(logits: torch.Tensor) -> torch.Tensor:
    """Allocation logits [T, h, S] -> one row [h, S] whose normalised sigmoid is the mean of the T rows'
    normalised sigmoids: the skill weights of a task without a row of its own (METHODS.md §1.7, OA-17).

    The row's logits are logit(c · w_new) with c = 0.5 / max(w_new) per head, so that
    normalise(σ(row)) = w_new (to ~1e-7) and the largest entry sits at σ = 0.5.
    """
    weights = normalise_rows(torch.sigmoid(logits.double())).mean(0)  # [h, S], each head on the simplex
    scaled = 0.5 * weights / weights.amax(-1, keepdim=True)
    return torch.logit(scaled.clamp_min(1e-30)).to(logits.dtype)
