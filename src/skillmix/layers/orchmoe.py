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
from ..routing import TaskRouter, normalise_rows, relaxed_bernoulli
from .base import AdapterLayer, init_uniform_


class OrchMoELayer(AdapterLayer):
    routing = "sequence"
    uses_task_weights = True
    routing_parameters = ("allocation_logits",)

    @classmethod
    def build_model_router(cls, config, d_model: int) -> TaskRouter | None:
        """The task router, built only when it matters: with a uniform allocation (skill_router="uniform")
        alpha = w Z_hat = 1/S whatever w is, so a task router would get no gradient."""
        if config.task_router != "attention" or config.skill_router != "learned":
            return None
        return TaskRouter(d_model, config.n_abstract_tasks, config.router_dim, scoring=config.router_scoring)

    @classmethod
    def export_routing(cls, config, task_id=None, task_weights=None) -> dict:
        n = config.n_abstract_tasks
        w = None if task_weights is None else torch.as_tensor(task_weights, dtype=torch.float32).flatten()
        if w is None or w.numel() != n or (w < 0).any() or abs(w.sum().item() - 1) > 1e-4:
            raise SkillMixError(f"export_lora(task_weights=...): expected {n} non-negative weights summing to 1 "
                                f"for {config.method!r}, got {task_weights!r}")
        return {"task_weights": w}

    def reset_parameters(self, config) -> None:
        s, r, d_in = config.n_skills, self.r, self.in_features
        self.n_skills, self.n_abstract_tasks = s, config.n_abstract_tasks
        self.mix, self.temperature = config.mix, config.gumbel_temperature
        self.lora_A = nn.Parameter(init_uniform_(torch.empty(s, r, d_in), d_in))  # [S, r, d_in]
        self.lora_B = nn.Parameter(torch.zeros(s, self.out_features, r))  # [S, d_out, r]
        if not config.init_weights:
            init_uniform_(self.lora_B.data, r)
        if config.skill_router == "learned":  # Theta [N, S]
            theta = torch.empty(config.n_abstract_tasks, s)
            # rows that differ from the start, so that alpha = w Z_hat depends on w (the task router gets a
            # gradient); "poly" is PEFT Poly's near-constant init, a saddle for a router that must discover tasks
            self.allocation_logits = nn.Parameter(theta.normal_() if config.allocation_init == "normal"
                                                  else theta.uniform_(-1e-3, 1e-3))
        else:  # ablation: fixed uniform allocation, no parameters
            self.allocation_logits = None

    def set_gumbel_temperature(self, temperature: float) -> None:
        self.temperature = float(temperature)

    def eval_allocation(self) -> torch.Tensor | None:
        """sigmoid(Theta) [N, S]; None for the fixed uniform allocation (skill_router="uniform")."""
        return None if self.allocation_logits is None else torch.sigmoid(self.allocation_logits)

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

    def routed_skill_weights(self, batch_size: int) -> torch.Tensor:
        """alpha [batch_size, S] from the context's task weights; recorded; cached while generating."""
        ctx = self.context
        if ctx.task_weights is None:
            raise SkillMixError("orchmoe layer has no task weights: call the SkillMixModel, not the base model")
        if self.training:
            alpha = self.skill_weights(ctx.per_example(ctx.task_weights, batch_size))
        else:
            theta = self.allocation_logits
            key = (ctx.task_weights, ctx.task_weights._version, batch_size, -1 if theta is None else theta._version)
            alpha = ctx.cached(self.name, key, lambda: self.skill_weights(ctx.per_example(ctx.task_weights, batch_size)))
        ctx.record[self.name] = alpha.detach()
        return alpha

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.routed_skill_weights(x.shape[0])  # [B, S]
        s, r, h = self.n_skills, self.r, self.dropout(x)
        if self.mix == "output":
            u = F.linear(h, self.lora_A.reshape(s * r, -1)).unflatten(-1, (s, r))  # [B, T, S, r]
            gated = (u * alpha[:, None, :, None].to(u.dtype)).flatten(-2)  # [B, T, S*r]
            return F.linear(gated, self._up()) * self.scaling
        a = torch.einsum("bs,srd->brd", alpha, self.lora_A)  # [B, r, d_in]
        b = torch.einsum("bs,sor->bor", alpha, self.lora_B)  # [B, d_out, r]
        return h.bmm(a.transpose(1, 2)).bmm(b.transpose(1, 2)) * self.scaling

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        s, r = self.n_skills, self.r
        bsz = x.shape[0]
        alpha = self.routed_skill_weights(bsz)  # [B, S]
        if self.mix == "output":
            # a rank-(S*r) LoRA with the per-example skill weights applied in rank space: [N, S*r]
            x2, result = self.base_flat(x)
            u = F.linear(self.dropout(x2), self.lora_A.reshape(s * r, -1))
            gated = (u.view(bsz, -1, s, r) * alpha[:, None, :, None].to(u.dtype)).view(-1, s * r)
            up = self.derived("up", self._up, self.lora_B)
            return self.accumulate_(result, gated, up.t(), self.scaling).view(*x.shape[:-1], self.out_features)
        # poly mix: per-example A [B, d_in, r] and B [B, r, d_out], cached while generating
        a, b = self._mixed(alpha)
        x3 = x.unsqueeze(1) if x.dim() == 2 else x
        result = self.base_layer(x3)
        out = self.accumulate_(result, self.dropout(x3).bmm(a), b, self.scaling)
        return out.squeeze(1) if x.dim() == 2 else out

    def _mixed(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def compute():
            a = torch.einsum("bs,srd->bdr", alpha, self.lora_A)  # [B, d_in, r]
            b = torch.einsum("bs,sor->bro", alpha, self.lora_B)  # [B, r, d_out]
            return a, b
        if self.training:
            return compute()
        key = (alpha, self.lora_A._version, self.lora_B._version)
        return self.context.cached(self.name + ".factors", key, compute)

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
