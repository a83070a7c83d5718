"""Poly and MHR, as PEFT implements them: per-task allocation over S skills, A and B mixed separately.

w_t = normalise(GumbelSigmoid(theta_t)) in training, normalise(sigmoid(theta_t)) in eval, per head;
A_t = sum_s w_ts A_s, B_t = sum_s w_ts B_s per head block; delta(x) = s * x A_t B_t (s = 1/r by default).
MHR (n_splits = h > 1) routes each of h blocks of A's input rows and B's output columns separately.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SkillMixError
from ..routing import normalise_rows, relaxed_bernoulli
from .base import AdapterLayer, init_uniform_


class PolyLayer(AdapterLayer):
    routing = "sequence"

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
