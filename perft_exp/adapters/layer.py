"""`PerftLayer`: one layer's PEFT experts and their routing, for each of the four variants.

R: own router over N experts, top-K, renormalised weights      y = sum_{j in J} v_j expert_j(x)
E: one expert per FFN expert, the frozen router's S and p_i    y = sum_{i in S} p_i expert_i(x)
D: N experts always on                                          y = sum_j expert_j(x)
S: one expert always on                                         y = expert(x)
Dropout (training only): `dropout_scope=expert` leaves it to the experts, one mask per (token, expert) pair
(perft_exp.adapters.experts); `shared` draws one mask on x here, read by every expert.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.experts import PeftExperts
from perft_exp.adapters.router import PeftRouter
from perft_exp.adapters.variants import Routing, get_variant

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PerftLayer(nn.Module):
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
        self.variant, self.impl, self.routing = cfg.variant, cfg.impl, cfg.spec.routing
        self.authors_weighting_defect = cfg.authors_weighting_defect
        dtype = model_dtype if cfg.adapter_dtype == "model" else _DTYPES[cfg.adapter_dtype]
        spec = cfg.spec
        num_experts, self.top_k = spec.routing_numbers(cfg.to_dict())
        assert num_experts and self.top_k, (
            f"variant {cfg.variant}: resolve the config against the model first"
        )
        if self.authors_weighting_defect and cfg.top_k > base_top_k:
            raise ValueError(
                f"perft.authors_weighting_defect needs perft.top_k <= the model's top-k ({base_top_k}), got {cfg.top_k}"
            )
        shared = cfg.dropout_scope == "shared" and cfg.dropout > 0
        self.dropout = nn.Dropout(cfg.dropout) if shared else nn.Identity()
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
        self.router = (
            PeftRouter(
                hidden_size,
                num_experts,
                cfg.top_k,
                init=cfg.router_init,
                device=device,
                dtype=model_dtype if cfg.router_dtype == "model" else torch.float32,
            )  # fmt: skip
            if spec.routing is Routing.OWN
            else None
        )
        # Set on each forward of R: what the aux loss and the routing statistics read.
        self.router_logits: torch.Tensor | None = None
        self.routing_indices: torch.Tensor | None = None

    @property
    def needs_base_routing(self) -> bool:
        return get_variant(self.variant).uses_base_routing or self.authors_weighting_defect

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    def activated_fraction(self) -> float:
        """Fraction of the PEFT experts' parameters that one token activates."""
        return self.top_k / self.num_experts

    def forward(self, x: torch.Tensor, base_routing: tuple | None = None) -> torch.Tensor:
        """x (T, D) -> y (T, D) in x's dtype. `base_routing` is the frozen router's output (E, defect)."""
        h = self.dropout(x.to(self.experts.A.dtype))
        if self.routing is Routing.ALL:
            y = self.experts.forward_all(h)
        else:
            if self.routing is Routing.OWN:
                logits, weights, indices = self.router(x)
                self.router_logits, self.routing_indices = logits, indices
                if self.authors_weighting_defect:
                    weights = base_routing[1][:, : self.top_k]  # the defect: base weights, sorted descending
            else:
                _, weights, indices = base_routing
                self.routing_indices = indices
            y = self.experts.forward_routed(h, weights, indices, self.impl)
        return y.to(x.dtype)


def perft_layers(model: nn.Module) -> Iterator[PerftLayer]:
    return (m for m in model.modules() if isinstance(m, PerftLayer))


def adapter_aux_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """R's router load-balancing loss over all layers, in the base model's Switch form (padding masked).

    None when the model has no PEFT router or no forward has run since the last call (reading it consumes it).
    """
    layers = [m for m in perft_layers(model) if m.router is not None and m.router_logits is not None]
    if not layers:
        return None
    logits = tuple(m.router_logits for m in layers)
    for m in layers:
        m.router_logits = None
    return load_balancing_loss_func(logits, layers[0].num_experts, layers[0].top_k, attention_mask)
