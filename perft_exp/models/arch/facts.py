"""What the code knows of one MoE family: the `MoEArchitecture` record and the errors about it.

A family file or detection (perft_exp/models/arch/detect.py) builds the record; perft_exp.models.arch keeps
the registry of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

# (logits (T, E), top-k weights (T, k), indices (T, k))
Routing = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
# Gate/up layouts of a fused expert tensor: gate rows then up rows (E, 2I, D); the same transposed (E, D, 2I);
# gate and up alternating along 2I (gpt-oss); "none": no fused gate/up tensor (DBRX, non-gated experts).
GATE_UP_LAYOUTS = ("concatenated", "transposed", "interleaved", "interleaved_transposed", "none")


@dataclass(frozen=True)
class MoEArchitecture:
    """Facts about one Hugging Face MoE family (transformers 5.x module layout)."""

    model_type: str  # config.model_type
    config_class: str  # transformers config class name, for building offline
    block_class: str  # class name of the sparse MoE block (layers[i].mlp)
    num_experts_key: str  # config attribute holding the number of FFN experts ("a.b": nested)
    top_k_key: str = "num_experts_per_tok"
    router_attr: str = "gate"  # block.gate(x) -> (router_logits, top_k_weights, top_k_index)
    experts_attr: str = "experts"  # fused 3-D expert weights
    expert_params: tuple[str, ...] = ("gate_up_proj", "down_proj")
    attention_qv: tuple[str, ...] = ("q_proj", "v_proj")
    # The authors' adapter-router aux-loss coefficient on this family (docs/method.md); 0.01 elsewhere.
    adapter_aux_loss_coef: float = 0.01
    # Per-token always-active parts of the block beyond the routed experts (e.g. Qwen2-MoE shared expert).
    always_active: tuple[str, ...] = field(default=())
    # (block, router output) -> (logits, top-k weights, top-k indices), for routers that return another form.
    router_output: Callable[[nn.Module, object], Routing] | None = None
    router_weight: str | None = (
        "weight"  # the router's (E, D) scoring matrix, relative to the router; None: none
    )
    gate_up: str = "concatenated"  # layout of expert_params[0], one of GATE_UP_LAYOUTS
    detected: bool = False  # True: found by perft_exp/models/arch/detect.py, no family file

    def __post_init__(self) -> None:
        assert self.gate_up in GATE_UP_LAYOUTS, f"{self.model_type}: gate_up={self.gate_up!r}"

    def num_experts(self, config) -> int:
        """E, the FFN experts per MoE block, from the config."""
        return int(_config_value(config, self.num_experts_key))

    def top_k(self, config) -> int:
        """k, the experts the frozen router picks per token, from the config."""
        return int(_config_value(config, self.top_k_key))

    def is_block(self, module: nn.Module) -> bool:
        """Whether `module` is this family's MoE block."""
        return type(module).__name__ == self.block_class

    def router(self, block: nn.Module) -> nn.Module:
        """The block's router."""
        return getattr(block, self.router_attr)

    def experts(self, block: nn.Module) -> nn.Module:
        """The block's experts module."""
        return getattr(block, self.experts_attr)

    def routing(self, block: nn.Module, output) -> Routing:
        """The router's output as (logits (T, E), top-k weights (T, k), top-k indices (T, k))."""
        return self.router_output(block, output) if self.router_output is not None else output

    def router_matrix(self, block: nn.Module) -> torch.Tensor:
        """The frozen router's (E, D) scoring matrix W_g; a one-line error where the router has none."""
        if self.router_weight is None:
            raise NotApplicable(f"{self.model_type}: the router has no (experts, hidden) weight matrix")
        return functools.reduce(getattr, self.router_weight.split("."), self.router(block))

    def gate_rows(self, block: nn.Module) -> torch.Tensor:
        """The experts' gate projections as (E, I, D) rows;
        a one-line error where there is no gate/up split."""
        if self.gate_up == "none" or not self.expert_params:
            raise NotApplicable(f"{self.model_type}: the experts have no fused gate/up tensor")
        w = getattr(self.experts(block), self.expert_params[0])
        if self.gate_up.endswith("transposed"):
            w = w.transpose(1, 2)  # (E, D, 2I) -> (E, 2I, D)
        assert w.shape[1] % 2 == 0, f"{self.model_type}: gate/up tensor {tuple(w.shape)} has an odd 2I"
        return w[:, 0::2] if self.gate_up.startswith("interleaved") else w[:, : w.shape[1] // 2]


class NotApplicable(ValueError):
    """A statistic or baseline that this family's modules cannot give (no router matrix, no gate/up split)."""


class UnsupportedModel(ValueError):
    """A model detection cannot attach PERFT to; the message says what was not found."""


def _config_value(config, key: str):
    value = config
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value
