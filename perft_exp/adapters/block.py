"""`PerftMoEBlock`: a frozen MoE block with PEFT experts in parallel:  y = moe(x) + peft(x).

The base block runs unchanged (its router stays where transformers' router-logit hooks find it).
For variants that reuse the frozen routing (E, and R's authors-defect ablation) a forward hook on
the base router hands its (logits, top-k weights, top-k indices) to the PEFT layer, so the routing
is computed once and is exactly the base model's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from perft_exp.adapters.layer import PerftLayer


class PerftMoEBlock(nn.Module):
    def __init__(
        self,
        base_layer: nn.Module,
        perft: PerftLayer,
        router: nn.Module,
        routing: Callable[[nn.Module, object], tuple] | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        # The family's router-output converter (MoEArchitecture.routing): its output as (logits, weights, indices).
        self._routing = routing
        self.perft = perft
        self._base_routing: tuple | None = None
        self.enabled = True  # False: the frozen block alone (base-model evaluation)
        if perft.needs_base_routing:
            router.register_forward_hook(self._capture_routing)

    def _capture_routing(self, module: nn.Module, args, output) -> None:
        self._base_routing = output if self._routing is None else self._routing(self.base_layer, output)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = self.base_layer(hidden_states, *args, **kwargs)
        routing, self._base_routing = self._base_routing, None
        if not self.enabled:
            return out
        if self.perft.needs_base_routing and routing is None:
            raise RuntimeError(
                "the base router did not run in this block's forward; cannot route the E experts"
            )
        y = self.perft(hidden_states.reshape(-1, hidden_states.shape[-1]), routing)
        if isinstance(out, tuple):  # blocks that also return their router logits
            return (out[0] + y.view_as(out[0]), *out[1:])
        return out + y.view_as(out)
