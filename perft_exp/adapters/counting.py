"""Parameter accounting read off an instantiated model (works on the `meta` device and under ZeRO-3).

  trainable            parameters that require grad
  activated_trainable  of those, what one token uses: R's K of N experts plus its router, E's k of E,
                       all of D and S, all of attention LoRA, k/E of LoRA on the fused experts; for PERFT the
                       routing kind's bound (`activated_fraction`: top-p counts K of N, the most a token uses)
  base_total           the frozen model's parameters
  base_active          of those, what one token uses: all but the (E - k) / E unchosen FFN experts
The paper's efficiency ratio is activated_trainable / base_active.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import nn

from perft_exp.adapters.layer import PerftLayer
from perft_exp.models.arch import UnsupportedModel, architecture_for


@dataclass
class ParamCounts:
    """A model's parameter counts (the module docstring defines each)."""

    trainable: int
    activated_trainable: int
    base_total: int
    base_active: int

    @property
    def trainable_ratio(self) -> float:
        """trainable / base_total."""
        return self.trainable / self.base_total

    @property
    def activated_ratio(self) -> float:
        """activated_trainable / base_active: the paper's efficiency ratio."""
        return self.activated_trainable / self.base_active

    def to_dict(self) -> dict:
        """The four counts and the two ratios."""
        return {
            **asdict(self),
            "trainable_ratio": self.trainable_ratio,
            "activated_ratio": self.activated_ratio,
        }


def _numel(p: nn.Parameter, packed: dict[int, int]) -> int:
    if id(p) in packed:  # a 4-bit tensor: count the weights it holds, not its packed bytes
        return packed[id(p)]
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 leaves a 0-size shard in p


def _packed_numels(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> the weights it holds, for bitsandbytes' 4-bit tensors (packed two weights a byte)."""
    from perft_exp.models.quantization import quant_states

    return {id(tensor): math.prod(state.shape) for tensor, state in quant_states(model)}


def count_parameters(model: nn.Module) -> ParamCounts:
    """The model's ParamCounts; a model without MoE blocks counts every parameter as active."""
    config = getattr(model, "config", None)
    try:
        arch = architecture_for(model) if config is not None else None
    except UnsupportedModel:  # a dense model: every parameter is active
        arch = None
    expert_fraction = arch.top_k(config) / arch.num_experts(config) if arch else 1.0
    expert_marker = f".{arch.experts_attr}." if arch else None

    perft_prefixes = {name + ".": m for name, m in model.named_modules() if isinstance(m, PerftLayer)}
    packed = _packed_numels(model)
    trainable = activated = base_total = base_active = 0
    for name, p in model.named_parameters():
        n = _numel(p, packed)
        layer = next((m for prefix, m in perft_prefixes.items() if name.startswith(prefix)), None)
        if layer is not None:
            fraction = 1.0 if ".router." in name else layer.activated_fraction()
        else:
            fraction = expert_fraction if expert_marker and expert_marker in name else 1.0
        if p.requires_grad:
            trainable += n
            activated += round(n * fraction)
        else:
            base_total += n
            base_active += round(n * fraction)
    return ParamCounts(trainable, activated, base_total, base_active)
