"""Attach PERFT (or a LoRA baseline) to a Hugging Face MoE model through PEFT; freeze the base; R's aux loss.

    model = AutoModelForCausalLM.from_pretrained(...)
    # a PeftModel:
    model = apply_adapters(model, PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=16))
    out = model(**batch, labels=labels, output_router_logits=True)
    # LM loss + the base aux loss + (training) aux_loss_coef x R's router aux loss (perft_exp.adapters.tuner):
    out.loss

Attach before the model's first forward: transformers installs its router-logit hooks then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from peft import get_peft_model
from torch import nn

from perft_exp.adapters.baselines import apply_lora_baseline
from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.layer import PerftLayer, adapter_aux_loss, perft_layers
from perft_exp.adapters.peft_compat import quiet_peft
from perft_exp.adapters.tuner import PerftPeftConfig
from perft_exp.models.arch import architecture_for

__all__ = [
    "PerftLayer",
    "adapter_aux_loss",
    "adapters_disabled",
    "apply_adapters",
    "apply_perft",
    "freeze",
    "perft_layers",
    "trainable_parameters",
]


def freeze(model: nn.Module) -> None:
    """Set requires_grad False on every parameter of the model."""
    for p in model.parameters():
        p.requires_grad_(False)


def apply_perft(model: nn.Module, cfg: PerftConfig) -> nn.Module:
    """`model` as a PEFT model with a PERFT adapter beside every MoE block; only PEFT parameters train."""
    if not cfg.is_perft:
        raise ValueError(f"apply_perft takes variants R, E, D, S; got {cfg.variant!r}")
    peft_config = PerftPeftConfig.from_knobs(
        cfg, base_model_name_or_path=getattr(model, "name_or_path", None) or None
    )
    with quiet_peft():
        peft_model = get_peft_model(model, peft_config)
    peft_model.perft_config = peft_model.peft_config["default"].knobs()  # resolved against the model
    return peft_model


def apply_adapters(model: nn.Module, cfg: PerftConfig) -> nn.Module:
    """PERFT variants and LoRA baselines through HF PEFT (returns a PeftModel); `none` freezes only.

    `cfg` is resolved against the model first (PerftConfig.resolve);
    `model.perft_config` is the resolved one."""
    cfg = cfg.resolve(architecture_for(model), model.config)
    if cfg.variant == "none":
        freeze(model)
        model.perft_config = cfg
        return model
    if cfg.is_perft:
        return apply_perft(model, cfg)
    return apply_lora_baseline(model, cfg)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """{name: parameter} of the parameters that require grad."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the frozen base model (a PEFT model's adapters disabled; a bare model is the base already)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
        return
    yield
