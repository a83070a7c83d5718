"""MoLoRA: E rank-r LoRA experts mixed per token by a softmax router on the layer input.

delta(x) = s * sum_e p_e(x) B_e A_e x,  p(x) = softmax(W_g x) (optionally top-k, not renormalised).
Computed as one rank-(E*r) LoRA with the router's gate between the two dense matmuls.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..routing import token_router_probs
from .base import AdapterLayer, init_uniform_


class MoLoRALayer(AdapterLayer):
    routing = "token"
    routing_parameters = ("router",)

    def reset_parameters(self, config) -> None:
        e, r, d_in, d_out = config.num_experts, self.r, self.in_features, self.out_features
        self.num_experts, self.top_k, self.balance_coef = e, config.top_k, config.load_balancing_coef
        self.lora_A = nn.Parameter(init_uniform_(torch.empty(e, r, d_in), d_in))  # [E, r, d_in]
        self.lora_B = nn.Parameter(torch.zeros(e, d_out, r))  # [E, d_out, r]
        if not config.init_weights:
            init_uniform_(self.lora_B.data, r)
        self.router = nn.Parameter(torch.randn(e, d_in) * 0.02)  # W_g [E, d_in], no bias

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        # One matmul over x for the down-projections of all experts and the router logits.
        e, r = self.num_experts, self.r
        x2, result = self.base_flat(x)
        down = self.lora_A.reshape(e * r, -1)
        if self.dropout_is_identity():
            w = self.derived("down_router", lambda: torch.cat([down, self.router]), self.lora_A, self.router)
            z = F.linear(x2, w)  # [N, E*r + E]
            u, logits = z[:, : e * r], z[:, e * r:]
        else:
            u, logits = F.linear(self.dropout(x2), down), F.linear(x2, self.router)
        probs = token_router_probs(logits, self.top_k)  # [N, E]
        self.record_token_routing(probs, x.shape[:-1])
        gated = (u.unflatten(-1, (e, r)) * probs.to(u.dtype).unsqueeze(-1)).flatten(-2)  # [N, E*r]
        up = self.derived("up", lambda: self.lora_B.permute(1, 0, 2).reshape(self.out_features, e * r), self.lora_B)
        return self.accumulate_(result, gated, up.t(), self.scaling).view(*x.shape[:-1], self.out_features)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        e, r = self.num_experts, self.r
        probs = token_router_probs(F.linear(x, self.router), self.top_k)  # [B, T, E]
        self.record_token_routing(probs, x.shape[:-1])
        u = F.linear(self.dropout(x), self.lora_A.reshape(e * r, -1))  # [B, T, E*r]
        gated = (u.unflatten(-1, (e, r)) * probs.to(u.dtype).unsqueeze(-1)).flatten(-2)  # [B, T, E*r]
        up = self.lora_B.permute(1, 0, 2).reshape(self.out_features, e * r)  # [d_out, E*r]
        return F.linear(gated, up) * self.scaling
