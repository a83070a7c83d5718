"""MHR (multi-head routing): Poly with the layer's input and output split into h heads, each routed by its own
allocation row (n_splits = h, 4 by default). The computation is Poly's."""
from __future__ import annotations

from .poly import PolyLayer


class MHRLayer(PolyLayer):
    @classmethod
    def prepare_config(cls, config) -> None:
        if config.n_splits is None:
            config.n_splits = 4

    @classmethod
    def check_config(cls, config) -> tuple[str, str] | None:
        return None
