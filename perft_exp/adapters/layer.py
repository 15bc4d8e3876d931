"""`PerftLayer`: one layer's PEFT experts and their routing kind (perft_exp/adapters/routing.py).

R: own router over N experts, top-K, renormalised weights      y = sum_{j in J} v_j expert_j(x)
E: one expert per FFN expert, the frozen router's S and p_i    y = sum_{i in S} p_i expert_i(x)
D: N experts always on                                          y = sum_j expert_j(x)
S: one expert always on                                         y = expert(x)
The routing kind picks the experts and weights; the layer runs them (masked slots weigh 0) and keeps the last
forward's routing for the aux loss and the routing statistics.
Dropout (training only): `dropout_scope=expert` leaves it to the experts, one mask per (token, expert) pair
(perft_exp.adapters.experts); `shared` draws one mask on x here, read by every expert.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.experts import PeftExperts, cast
from perft_exp.adapters.routing import routing_kind
from perft_exp.adapters.variants import Routing

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PerftLayer(nn.Module):
    """One MoE block's PEFT experts and their routing kind: x (T, D) -> y (T, D) (module docstring)."""

    def __init__(
        self,
        cfg: PerftConfig,
        hidden_size: int,
        base_top_k: int,
        *,
        model_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.variant, self.impl = cfg.variant, cfg.impl
        dtype = model_dtype if cfg.adapter_dtype == "model" else _DTYPES[cfg.adapter_dtype]
        spec = cfg.spec
        num_experts, self.top_k = spec.routing_numbers(cfg.to_dict())
        assert num_experts and self.top_k, (
            f"variant {cfg.variant}: resolve the config against the model first"
        )
        if cfg.authors_weighting_defect and cfg.top_k > base_top_k:
            raise ValueError(
                f"perft.authors_weighting_defect needs perft.top_k <= the model's top-k ({base_top_k}), "
                f"got {cfg.top_k}"
            )
        shared = cfg.dropout_scope == "shared" and cfg.dropout > 0
        self.dropout = nn.Dropout(cfg.dropout) if shared else None
        self.experts = PeftExperts(
            num_experts,
            hidden_size,
            cfg.bottleneck,
            form=cfg.form,
            activation=cfg.activation,
            scaling=cfg.scaling,
            init=cfg.init,
            dropout=cfg.dropout if cfg.dropout_scope == "expert" else 0.0,
            dtype=dtype,
            device=device,
        )
        self.routing = routing_kind(cfg.to_dict(), num_experts, self.top_k)
        # E's experts may run inside the frozen experts' grouped computation (perft_exp.adapters.fused): one
        # PEFT expert per FFN expert, routed by the frozen router, reading the block's input as it is (a
        # shared dropout mask would change it).
        self.fits_base_experts = (
            cfg.spec.routing is Routing.BASE and self.dropout is None and cfg.impl in ("auto", "fused")
        )
        router_dtype = model_dtype if cfg.router_dtype == "model" else torch.float32
        # Its own child `router` (None when the kind learns nothing): the adapter files' tensor keys name it.
        self.router = self.routing.learned_router(hidden_size, dtype=router_dtype, device=device)
        # Set on each forward of a routed layer: what the aux loss and the routing statistics read.
        self.router_logits: torch.Tensor | None = None  # (T, N), a learned router's
        self.routing_indices: torch.Tensor | None = None  # (T, K)
        self.routing_taken: torch.Tensor | None = None  # (T, K) bool, None when every slot is taken

    @property
    def needs_base_routing(self) -> bool:
        """Whether the routing kind reads the frozen router's output (E, R's authors' defect)."""
        return self.routing.uses_base_routing

    @property
    def num_experts(self) -> int:
        """N, the PEFT experts of this layer."""
        return self.experts.num_experts

    def runs_in_base_experts(self, x: torch.Tensor) -> bool:
        """Whether a call on x (T, D) runs inside the frozen experts' grouped computation: an E layer
        (`fits_base_experts`) on a call whose path is grouped (`impl=fused`: any call grouped_mm takes)."""
        return self.fits_base_experts and self.experts.path(self.impl, x, self.top_k) == "grouped"

    def activated_fraction(self) -> float:
        """Fraction of the PEFT experts' parameters that one token activates (at most)."""
        return self.routing.activated_fraction()

    def extra_repr(self) -> str:
        """The routing kind, for the module's repr."""
        return f"routing={self.routing.extra_repr()}"

    def forward(
        self, x: torch.Tensor, base_routing: tuple | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (T, D) -> y (T, D) in x's dtype; with `residual` (T, D), residual + y in the residual's dtype
        (the block's output: the experts' last matmul adds it where it can, one kernel less per layer).
        `base_routing` is the frozen router's output (E, defect)."""
        experts = self.experts
        h = cast(x, experts.A.dtype)
        if self.dropout is not None:
            h = self.dropout(h)
        routed = self.routing.route(x, self.router, base_routing)
        if routed.indices is None:
            y = experts.forward_all(h, residual=residual)
        else:
            # Plain tensors set in the instance dict: nn.Module.__setattr__'s checks for parameters, buffers
            # and submodules cost more than the rest of a decode step's bookkeeping.
            state = self.__dict__
            if routed.logits is not None:
                state["router_logits"] = routed.logits
            state["routing_indices"], state["routing_taken"] = routed.indices, routed.taken
            y = experts.forward_routed(
                h, routed.weights, routed.indices, self.impl, taken=routed.taken, residual=residual
            )
        return cast(y, x.dtype) if residual is None else y


def perft_layers(model: nn.Module) -> Iterator[PerftLayer]:
    """Every PerftLayer of the model."""
    return (m for m in model.modules() if isinstance(m, PerftLayer))


def adapter_aux_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """The routing kind's aux loss over all layers (R: the router load balancing in the base model's Switch
    form, padding masked).

    A scalar tensor; `attention_mask` is the model's (B, L) mask. None when the model has no PEFT router or no
    forward has run since the last call (reading it consumes it).
    """
    layers = [m for m in perft_layers(model) if m.router_logits is not None]
    if not layers:
        return None
    logits = tuple(m.router_logits for m in layers)
    for m in layers:
        m.router_logits = None
    return layers[0].routing.aux_loss(logits, attention_mask)
