"""OrchMoE: S LoRA skills; the skill router mixes them per abstract task, the task router per prompt.

Task weights w [B, N] come from the model-level TaskRouter through the routing context (no task ids).
Z = GumbelSigmoid(Theta) per example in training, sigmoid(Theta) in eval; Z_hat = row-normalised Z [N, S];
alpha = w Z_hat [B, S] (convex). Output mix: delta = s * sum_s alpha_s B_s A_s x (a rank S*r LoRA gated
per example); poly mix: delta = s * (sum_s alpha_s B_s)(sum_s alpha_s A_s) x.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SkillMixError
from ..routing import normalise_rows, relaxed_bernoulli
from .base import AdapterLayer, init_uniform_


class OrchMoELayer(AdapterLayer):
    routing = "sequence"

    def reset_parameters(self, config) -> None:
        s, r, d_in = config.n_skills, self.r, self.in_features
        self.n_skills, self.n_abstract_tasks = s, config.n_abstract_tasks
        self.mix, self.temperature = config.mix, config.gumbel_temperature
        self.lora_A = nn.Parameter(init_uniform_(torch.empty(s, r, d_in), d_in))  # [S, r, d_in]
        self.lora_B = nn.Parameter(torch.zeros(s, self.out_features, r))  # [S, d_out, r]
        if not config.init_weights:
            init_uniform_(self.lora_B.data, r)
        if config.skill_router == "learned":  # Theta [N, S]
            self.allocation_logits = nn.Parameter(torch.empty(config.n_abstract_tasks, s).uniform_(-1e-3, 1e-3))
        else:  # ablation: fixed uniform allocation, no parameters
            self.allocation_logits = None

    def allocation(self, batch_size: int | None = None) -> torch.Tensor:
        """Row-normalised allocation Z_hat: [B, N, S] with Gumbel noise in training, else [N, S]."""
        if self.allocation_logits is None:
            return torch.full((self.n_abstract_tasks, self.n_skills), 1.0 / self.n_skills,
                              device=self.lora_A.device, dtype=self.lora_A.dtype)
        logits = self.allocation_logits
        if self.training and batch_size is not None:
            logits = logits.expand(batch_size, *logits.shape)  # one Gumbel draw per example
        return normalise_rows(relaxed_bernoulli(logits, self.temperature, self.training))

    def skill_weights(self, task_weights: torch.Tensor) -> torch.Tensor:
        """task weights w [B, N] -> skill weights alpha [B, S]."""
        z = self.allocation(task_weights.shape[0])
        equation = "bn,bns->bs" if z.dim() == 3 else "bn,ns->bs"
        return torch.einsum(equation, task_weights.to(z.dtype), z)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        if self.context.task_weights is None:
            raise SkillMixError("orchmoe layer has no task weights: call the SkillMixModel, not the base model")
        alpha = self.skill_weights(self.context.per_example(self.context.task_weights, x.shape[0]))  # [B, S]
        self.context.record[self.name] = alpha.detach()
        s, r, h = self.n_skills, self.r, self.dropout(x)
        if self.mix == "output":
            u = F.linear(h, self.lora_A.reshape(s * r, -1)).unflatten(-1, (s, r))  # [B, T, S, r]
            gated = (u * alpha[:, None, :, None].to(u.dtype)).flatten(-2)  # [B, T, S*r]
            return F.linear(gated, self._up()) * self.scaling
        a = torch.einsum("bs,srd->brd", alpha, self.lora_A)  # [B, r, d_in]
        b = torch.einsum("bs,sor->bor", alpha, self.lora_B)  # [B, d_out, r]
        return h.bmm(a.transpose(1, 2)).bmm(b.transpose(1, 2)) * self.scaling

    def _up(self) -> torch.Tensor:
        return self.lora_B.permute(1, 0, 2).reshape(self.out_features, -1)  # [d_out, S*r]

    def lora_factors(self, task_weights: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
        training, self.training = self.training, False
        try:
            alpha = self.skill_weights(task_weights.reshape(1, -1).to(self.lora_A))[0]  # [S]
        finally:
            self.training = training
        if self.mix == "output":  # rank S*r: alpha folded into A
            return (self.lora_A * alpha[:, None, None]).flatten(0, 1), self._up() * self.scaling
        return torch.einsum("s,srd->rd", alpha, self.lora_A), torch.einsum("s,sor->or", alpha, self.lora_B) * self.scaling
