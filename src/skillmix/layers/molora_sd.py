"""MoLoRA-SD: MoLoRA with one shared down-projection, delta(x) = s * sum_e p_e(x) B_e (A x).

It is MoDE with one group (expert rank p = r), so it reuses MoDE's computation.
"""
from __future__ import annotations

from .mode import MoDELayer


class MoLoRASDLayer(MoDELayer):
    @classmethod
    def group_size(cls, config) -> int:
        return config.r
