"""Per-architecture facts: where a model keeps its MoE blocks, routers and experts.

Each MoE family is one small file in this package that calls `register(MoEArchitecture(...))`.
Adding a family means adding a file; nothing else in the code branches on model type.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class MoEArchitecture:
    """Facts about one Hugging Face MoE family (transformers 5.x module layout)."""

    model_type: str  # config.model_type
    config_class: str  # transformers config class name, for building offline
    block_class: str  # class name of the sparse MoE block (layers[i].mlp)
    num_experts_key: str  # config attribute holding the number of FFN experts
    top_k_key: str = "num_experts_per_tok"
    router_attr: str = "gate"  # block.gate(x) -> (router_logits, top_k_weights, top_k_index)
    experts_attr: str = "experts"  # fused 3-D expert weights
    expert_params: tuple[str, ...] = ("gate_up_proj", "down_proj")
    attention_qv: tuple[str, ...] = ("q_proj", "v_proj")
    # The authors' adapter-router aux-loss coefficient on this family (docs/method.md); 0.01 elsewhere.
    adapter_aux_loss_coef: float = 0.01
    # Per-token always-active parts of the block beyond the routed experts (e.g. Qwen2-MoE shared expert).
    always_active: tuple[str, ...] = field(default=())

    def num_experts(self, config) -> int:
        return int(getattr(config, self.num_experts_key))

    def top_k(self, config) -> int:
        return int(getattr(config, self.top_k_key))

    def is_block(self, module: nn.Module) -> bool:
        return type(module).__name__ == self.block_class

    def router(self, block: nn.Module) -> nn.Module:
        return getattr(block, self.router_attr)

    def experts(self, block: nn.Module) -> nn.Module:
        return getattr(block, self.experts_attr)


_REGISTRY: dict[str, MoEArchitecture] = {}


def register(arch: MoEArchitecture) -> MoEArchitecture:
    _REGISTRY[arch.model_type] = arch
    return arch


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def get_architecture(model_type: str) -> MoEArchitecture:
    """The facts for `model_type`; a clear error naming the supported types otherwise."""
    if not _REGISTRY:
        _load_all()
    if model_type not in _REGISTRY:
        raise ValueError(
            f"unknown MoE architecture {model_type!r}; supported: {', '.join(sorted(_REGISTRY))} "
            "(add a file to perft_exp/models/arch/ to support a new family)"
        )
    return _REGISTRY[model_type]


def supported_architectures() -> list[str]:
    if not _REGISTRY:
        _load_all()
    return sorted(_REGISTRY)


def find_moe_blocks(model: nn.Module, arch: MoEArchitecture) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every sparse MoE block, in layer order."""
    return [(name, m) for name, m in model.named_modules() if arch.is_block(m)]
