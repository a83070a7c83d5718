"""MoDE: a shared down-projection A and m rank-p up-projection experts per group of p rank positions.

With u = A x split into G = r/p groups u_k, and router R_k(x) = softmax(W_{R,k} x) over m experts:
delta(x) = s * sum_k sum_i R_k^i(x) B_k^i u_k. p = 1 is rank-one ("dyadic") MoDE; p = r is MoLoRA-SD.
Computed as one dense matmul over the (group, expert, position) axis, gated per token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..routing import token_router_probs
from .base import AdapterLayer, init_uniform_


class MoDELayer(AdapterLayer):
    routing = "token"
    routing_parameters = ("router",)
    router_dims = 2  # [.., G, m]: a softmax per group

    @classmethod
    def group_size(cls, config) -> int:
        """p: rank positions per group (one router per group)."""
        return config.expert_rank

    @classmethod
    def check_config(cls, config) -> tuple[str, str] | None:
        if config.r % cls.group_size(config):
            return "expert_rank", f"a divisor of r={config.r}"
        return None

    def reset_parameters(self, config) -> None:
        m, r, d_in, d_out = config.num_experts, self.r, self.in_features, self.out_features
        self.p = self.group_size(config)
        self.groups = r // self.p  # G
        self.num_experts, self.top_k, self.balance_coef = m, config.top_k, config.load_balancing_coef
        self.lora_A = nn.Parameter(init_uniform_(torch.empty(r, d_in), d_in))  # shared down [r, d_in]
        self.lora_B = nn.Parameter(torch.zeros(m, d_out, r))  # up vectors b_j^i [m, d_out, r]
        if not config.init_weights:
            init_uniform_(self.lora_B.data, r)
        self.router = nn.Parameter(torch.randn(self.groups, m, d_in) * 0.02)  # W_R [G, m, d_in], no bias

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        # One matmul over x for the shared down-projection and all routers: [N, r + G*m].
        g, m, p, r = self.groups, self.num_experts, self.p, self.r
        lead = x.shape[:-1]
        x2, result = self.base_flat(x)
        router = self.router.reshape(g * m, -1)
        if self.dropout_is_identity():
            z = F.linear(x2, self.derived("down_router", lambda: torch.cat([self.lora_A, router]), self.lora_A, self.router))
            u, logits = z[:, :r], z[:, r:]
        else:
            u, logits = F.linear(self.dropout(x2), self.lora_A), F.linear(x2, router)
        probs = token_router_probs(logits.unflatten(-1, (g, m)), self.top_k)  # [N, G, m], softmax per group
        self.record_token_routing(probs, lead)
        gated = (probs.to(u.dtype).unsqueeze(-1) * u.unflatten(-1, (g, 1, p))).flatten(-3)  # [N, G*m*p]
        up = self.derived("up", self._up, self.lora_B)
        return self.accumulate_(result, gated, up.t(), self.scaling).view(*lead, self.out_features)

    def _up(self) -> torch.Tensor:
        """Up-projections as one [d_out, G*m*p] matrix, columns ordered (group, expert, position)."""
        g, m, p = self.groups, self.num_experts, self.p
        return self.lora_B.unflatten(-1, (g, p)).permute(1, 2, 0, 3).reshape(self.out_features, g * m * p)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        g, m, p = self.groups, self.num_experts, self.p
        logits = F.linear(x, self.router.reshape(g * m, -1)).unflatten(-1, (g, m))  # [B, T, G, m]
        probs = token_router_probs(logits, self.top_k)  # softmax per group
        self.record_token_routing(probs, x.shape[:-1])
        u = F.linear(self.dropout(x), self.lora_A).unflatten(-1, (g, 1, p))  # [B, T, G, 1, p]
        gated = (probs.to(u.dtype).unsqueeze(-1) * u).flatten(-3)  # [B, T, G*m*p]
        return F.linear(gated, self._up()) * self.scaling
