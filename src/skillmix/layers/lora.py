"""LoRA: delta(x) = s * B A x, with A [r, d_in] and B [d_out, r] stored as PEFT stores them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterLayer, init_uniform_


class LoRALayer(AdapterLayer):
    routing = "none"
    saves_as_peft_lora = True

    def reset_parameters(self, config) -> None:
        self.lora_A = nn.Parameter(init_uniform_(torch.empty(self.r, self.in_features), self.in_features))  # [r, d_in]
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r))  # [d_out, r]
        if not config.init_weights:
            init_uniform_(self.lora_B.data, self.r)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, result = self.base_flat(x)
        u = F.linear(self.dropout(x2), self.lora_A)  # [N, r]
        return self.accumulate_(result, u, self.lora_B.t(), self.scaling).view(*x.shape[:-1], self.out_features)

    def lora_factors(self, **routing) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B * self.scaling
