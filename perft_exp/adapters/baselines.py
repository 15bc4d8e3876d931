"""The LoRA baselines of the paper, through HF PEFT.

  qv_lora             LoRA on attention q_proj, v_proj (the MoE-agnostic baseline)
  router_lora         LoRA on the frozen router's weight only
  expert_lora         LoRA on every FFN expert's fused 3-D weights (HF PEFT `target_parameters`)
  router_expert_lora  both
Each baseline's registry entry (perft_exp/adapters/variants.py) names what it wraps, as `lora_targets`:
"attention_qv" (modules), "router" and "experts" (raw parameters); the architecture file says where they live.
Rank = perft.bottleneck, alpha = perft.alpha (2 r unless set). HF PEFT cannot apply dropout to LoRA on
raw parameters (router/experts), so those baselines run with dropout 0 and say so in the log.
"""

from __future__ import annotations

import logging

from peft import LoraConfig, get_peft_model
from torch import nn

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.peft_compat import quiet_peft
from perft_exp.adapters.variants import LORA_BASELINES
from perft_exp.models.arch import MoEArchitecture, NotApplicable, architecture_for

log = logging.getLogger(__name__)


def lora_config(cfg: PerftConfig, arch: MoEArchitecture) -> LoraConfig:
    """HF PEFT's LoraConfig for `cfg`'s LoRA baseline on `arch`; NotApplicable where a target is missing."""
    if cfg.variant not in LORA_BASELINES:
        raise ValueError(f"not a LoRA baseline: {cfg.variant!r}; choose one of {', '.join(LORA_BASELINES)}")
    where = {
        "attention_qv": ([*arch.attention_qv], []),
        "router": ([], [f"{arch.router_attr}.{arch.router_weight}"] if arch.router_weight else []),
        "experts": ([], [f"{arch.experts_attr}.{p}" for p in arch.expert_params]),
    }
    missing = {
        "attention_qv": "no q_proj/v_proj",
        "router": "no router weight matrix",
        "experts": "no fused 3-D expert tensors",
    }
    for target in cfg.spec.lora_targets:
        if where[target] == ([], []):
            raise NotApplicable(f"{cfg.variant} does not apply to {arch.model_type}: {missing[target]}")
    targets = [where[t] for t in cfg.spec.lora_targets]
    modules = [m for mods, _ in targets for m in mods]
    parameters = [p for _, params in targets for p in params]
    dropout = cfg.dropout
    if parameters and dropout:
        log.warning("%s: HF PEFT applies no dropout to LoRA on parameters; using dropout 0", cfg.variant)
        dropout = 0.0
    return LoraConfig(
        r=cfg.bottleneck,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=dropout,
        target_modules=modules,
        target_parameters=parameters or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora_baseline(model: nn.Module, cfg: PerftConfig) -> nn.Module:
    """`model` wrapped by HF PEFT's LoRA for `cfg`'s baseline: a PeftModel carrying `perft_config`.

    LoRA on the experts over 4-bit experts is refused (NotApplicable): PEFT would skip them without a word."""
    if "experts" in cfg.spec.lora_targets and _has_4bit_experts(model):
        from perft_exp.checks import EXPERT_LORA_4BIT

        raise NotApplicable(f"{cfg.variant} on a 4-bit base: {EXPERT_LORA_4BIT}")
    with quiet_peft():
        peft_model = get_peft_model(model, lora_config(cfg, architecture_for(model)))
    peft_model.perft_config = cfg
    return peft_model


def _has_4bit_experts(model: nn.Module) -> bool:
    from perft_exp.models.quantization import expert_tensors, is_quantized_expert

    return any(is_quantized_expert(module, attr) for _, module, attr in expert_tensors(model))
