"""Routing kinds: how a token picks its PEFT experts and weighs them. One class per kind, one registry.

    kind = routing_kind(cfg, num_experts, top_k)      # the class for cfg's variant and knobs
    routed = kind.route(x, router, base_routing)       # x (T, D) -> Routed (per token: experts, weights)
    y = sum_k routed.weights[t, k] * expert_{routed.indices[t, k]}(x_t)  (perft_exp.adapters.experts)

A `Routed` holds, per token t, K slots: `indices` (T, K) (distinct within a row) and `weights` (T, K); a kind
that picks fewer than K experts for a token masks the other slots (`taken` False, weight 0), so a variable
number of experts per token runs through the same dense, grouped and loop expert compute. `indices=None` means
every PEFT expert at weight 1 (D, S).

  top_k   R: the learned router W_r (N, D): q = softmax_fp32(W_r x), J = topk(q, K), v = q_J / sum(q_J)
  top_p   R with `perft.top_p=p`: the fewest of the top-K whose q sum to >= p, renormalised over those taken
  base    E: the frozen router's top-k set S and its weights p_i (one PEFT expert per FFN expert)
  all     D, S: every PEFT expert, weight 1

Each kind also says which parameters one token activates (`activated_fraction`: counting), whether it reads
the frozen router's output (`uses_base_routing`) and its auxiliary loss (R: the Switch load-balancing loss).

A new routing kind is a subclass plus an entry in ROUTING_KINDS; its knob (a PerftConfig field, and a KNOBS
entry in adapters/variants.py when it should show in run names) is its `switch`: set,
it replaces the kind it refines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from perft_exp.adapters.router import PeftRouter
from perft_exp.adapters.variants import Routing, get_variant


@dataclass
class Routed:
    """One forward's routing: per token, the chosen PEFT experts and their weights."""

    indices: torch.Tensor | None  # (T, K) chosen experts, distinct per token; None: all experts at weight 1
    weights: torch.Tensor | None  # (T, K) fp32; 0 on masked slots
    taken: torch.Tensor | None = None  # (T, K) bool, False on masked slots; None: every slot taken
    logits: torch.Tensor | None = None  # (T, N) the learned router's logits (aux loss, router entropy)

    def experts_per_token(self) -> torch.Tensor:
        """(T,) how many PEFT experts each token uses."""
        assert self.indices is not None, "every expert is on"
        if self.taken is None:
            return torch.full(self.indices.shape[:1], self.indices.shape[1], device=self.indices.device)
        return self.taken.sum(-1)


def base_top_k(base_routing: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (T, k), indices (T, k)) of the frozen router's output
    (router_logits, top_k_weights, top_k_index)."""
    _, weights, indices = base_routing
    return weights, indices


class RoutingKind:
    """A routing kind of the PEFT experts of one layer (N of them, at most K per token)."""

    name: ClassVar[str]
    routing: ClassVar[Routing]  # the variants' routing it serves (adapters/variants.py)
    # The perft knob that, set, selects this kind over the plain one (switch None) of the same routing.
    switch: ClassVar[str | None] = None

    def __init__(self, num_experts: int, top_k: int) -> None:
        self.num_experts, self.top_k = num_experts, top_k

    @classmethod
    def from_config(cls, perft: Mapping, num_experts: int, top_k: int) -> RoutingKind:
        """The kind for a `perft` mapping, with N PEFT experts and at most K per token."""
        return cls(num_experts, top_k)

    @property
    def uses_base_routing(self) -> bool:
        """Whether `route` reads the frozen router's output."""
        return False

    def learned_router(self, hidden_size: int, **factory) -> nn.Module | None:
        """The learned parameters of the routing (the layer's `router`), or None."""
        return None

    def route(self, x: torch.Tensor, router: nn.Module | None, base_routing: tuple | None) -> Routed:
        """x (T, D), the layer's learned router, the frozen router's output -> the tokens' routing."""
        raise NotImplementedError

    def activated_fraction(self) -> float:
        """Fraction of the PEFT experts' parameters one token activates at most (parameter counting)."""
        return self.top_k / self.num_experts

    def aux_loss(
        self, logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The routing's auxiliary loss over all layers' router logits (T, N), or None."""
        return None

    def extra_repr(self) -> str:
        """The kind's name, N and K, for the layer's repr."""
        return f"{self.name}: num_experts={self.num_experts}, top_k={self.top_k}"


class TopK(RoutingKind):
    """R: its own router, top-K, renormalised (optionally weighted by the frozen
    router: the authors' defect)."""

    name, routing = "top_k", Routing.OWN

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        *,
        router_init: str = "linear",
        authors_weighting_defect: bool = False,
    ) -> None:
        super().__init__(num_experts, top_k)
        self.router_init = router_init
        self.authors_weighting_defect = authors_weighting_defect

    @classmethod
    def from_config(cls, perft: Mapping, num_experts: int, top_k: int, **kw) -> RoutingKind:
        """Top-K with the router init and the authors' defect flag of `perft`."""
        return cls(
            num_experts,
            top_k,
            router_init=perft.get("router_init", "linear"),
            authors_weighting_defect=bool(perft.get("authors_weighting_defect")),
            **kw,
        )

    @property
    def uses_base_routing(self) -> bool:
        """Only with the authors' defect, which takes the frozen router's weights."""
        return self.authors_weighting_defect

    def learned_router(self, hidden_size: int, *, dtype: torch.dtype, device=None) -> nn.Module:
        """The PeftRouter W_r (N, D), in `dtype`."""
        return PeftRouter(
            hidden_size, self.num_experts, self.top_k, init=self.router_init, dtype=dtype, device=device
        )

    def route(self, x: torch.Tensor, router: nn.Module | None, base_routing: tuple | None) -> Routed:
        """x (T, D) -> the router's top-K indices and renormalised weights (T, K), its logits (T, N)."""
        logits, weights, indices = router(x)
        if self.authors_weighting_defect:
            weights = base_top_k(base_routing)[0][:, : self.top_k]  # base weights, sorted descending
        return Routed(indices, weights, logits=logits)

    def aux_loss(self, logits, attention_mask):
        """Switch load balancing over the layers, in the base model's form (padding masked)."""
        return load_balancing_loss_func(logits, self.num_experts, self.top_k, attention_mask)


class TopP(TopK):
    """R with top-p: per token the fewest of the top-K experts whose router probabilities sum to >= p.

    q = softmax_fp32(W_r x); sort q descending; take slot k while sum_{j<k} q_(j) < p (so at least one, at
    most K); v = q over the slots taken, renormalised. p = 1 is top-K. The aux loss is top-K's (the router's
    balance).
    """

    name, switch = "top_p", "top_p"

    def __init__(self, num_experts: int, top_k: int, *, top_p: float, **kw) -> None:
        super().__init__(num_experts, top_k, **kw)
        self.top_p = top_p

    @classmethod
    def from_config(cls, perft: Mapping, num_experts: int, top_k: int) -> RoutingKind:
        """Top-K's settings plus `perft.top_p`."""
        return super().from_config(perft, num_experts, top_k, top_p=perft["top_p"])

    def route(self, x: torch.Tensor, router: nn.Module | None, base_routing: tuple | None) -> Routed:
        """x (T, D) -> top-K indices (T, K), the slots past mass p masked (`taken`), weights renormalised
        over the slots taken; logits (T, N)."""
        logits = router.logits(x)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        top, indices = torch.topk(probs, self.top_k, dim=-1)  # (T, K) descending
        before = top.cumsum(-1) - top  # mass of the slots ahead of each
        taken = before < self.top_p  # slot 0 always
        top = top * taken
        return Routed(indices, top / top.sum(-1, keepdim=True), taken=taken, logits=logits)

    def extra_repr(self) -> str:
        """Top-K's repr and p."""
        return f"{super().extra_repr()}, top_p={self.top_p}"


class Base(RoutingKind):
    """E: the frozen router's choice and weights, one PEFT expert per FFN expert."""

    name, routing = "base", Routing.BASE

    @property
    def uses_base_routing(self) -> bool:
        """Always: E routes by the frozen router."""
        return True

    def route(self, x: torch.Tensor, router: nn.Module | None, base_routing: tuple | None) -> Routed:
        """The frozen router's top-k weights and indices (T, k); x is not read."""
        weights, indices = base_top_k(base_routing)
        return Routed(indices, weights)


class AllOn(RoutingKind):
    """D, S: every PEFT expert for every token, weight 1."""

    name, routing = "all", Routing.ALL

    def route(self, x: torch.Tensor, router: nn.Module | None, base_routing: tuple | None) -> Routed:
        """Every PEFT expert at weight 1 (indices and weights None); x is not read."""
        return Routed(None, None)

    def activated_fraction(self) -> float:
        """1: every token uses every PEFT expert."""
        return 1.0


ROUTING_KINDS: dict[str, type[RoutingKind]] = {k.name: k for k in (TopK, TopP, Base, AllOn)}


def routing_kind_class(perft: Mapping) -> type[RoutingKind]:
    """The kind a `perft` mapping runs: the one of its variant's routing whose switch knob is set, else the
    plain one (switch None)."""
    routing = get_variant(perft["variant"]).routing
    kinds = [k for k in ROUTING_KINDS.values() if k.routing is routing]
    switched = [k for k in kinds if k.switch is not None and perft.get(k.switch) is not None]
    if len(switched) > 1:
        raise ValueError(f"perft.{switched[0].switch} and perft.{switched[1].switch} do not combine")
    if switched:
        return switched[0]
    (plain,) = [k for k in kinds if k.switch is None]
    return plain


def routing_kind(perft: Mapping, num_experts: int, top_k: int) -> RoutingKind:
    """The routing kind a `perft` mapping runs, with N PEFT experts and at most K per token."""
    return routing_kind_class(perft).from_config(perft, num_experts, top_k)
