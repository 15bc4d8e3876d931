"""Attach PERFT (or a LoRA baseline) to a Hugging Face MoE model, freeze the base, collect R's aux loss.

    model = AutoModelForCausalLM.from_pretrained(...)
    model = apply_adapters(model, PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=16))
    out = model(**batch, output_router_logits=True)       # out.loss includes the base aux loss
    loss = out.loss + coef * adapter_aux_loss(model, batch["attention_mask"])

Replace modules before the model's first forward: transformers installs its router-logit hooks then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from perft_exp.adapters.baselines import apply_lora_baseline
from perft_exp.adapters.block import PerftMoEBlock
from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.layer import PerftLayer
from perft_exp.models.arch import MoEArchitecture, architecture_for, find_moe_blocks


def freeze(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def apply_perft(model: nn.Module, cfg: PerftConfig, arch: MoEArchitecture | None = None) -> nn.Module:
    """Wrap every MoE block of `model` in a PerftMoEBlock (in place); only PEFT parameters train."""
    if not cfg.is_perft:
        raise ValueError(f"apply_perft takes variants R, E, D, S; got {cfg.variant!r}")
    arch = arch or architecture_for(model)
    cfg = cfg.resolve(arch, model.config)
    blocks = find_moe_blocks(model, arch)
    if not blocks:
        raise ValueError(
            f"variant {cfg.variant} needs MoE blocks ({arch.block_class}), but the model has none "
            "(check mlp_only_layers / decoder_sparse_step in its config)"
        )
    freeze(model)
    cfg_model = model.config
    for name, block in blocks:
        ref = next(arch.router(block).parameters(), None)
        ref = ref if ref is not None else next(block.parameters())
        layer = PerftLayer(
            cfg,
            cfg_model.hidden_size,
            arch.top_k(cfg_model),
            model_dtype=ref.dtype,
            device=ref.device,
        )
        _set_submodule(model, name, PerftMoEBlock(block, layer, arch.router(block), arch.routing))
    model.perft_config = cfg
    return model


def apply_adapters(model: nn.Module, cfg: PerftConfig) -> nn.Module:
    """PERFT variants in place; LoRA baselines through HF PEFT (returns a PeftModel); `none` freezes only.

    `cfg` is resolved against the model first (PerftConfig.resolve); `model.perft_config` is the resolved one."""
    cfg = cfg.resolve(architecture_for(model), model.config)
    if cfg.variant == "none":
        freeze(model)
        model.perft_config = cfg
        return model
    if cfg.is_perft:
        return apply_perft(model, cfg)
    return apply_lora_baseline(model, cfg)


def perft_layers(model: nn.Module) -> Iterator[PerftLayer]:
    return (m for m in model.modules() if isinstance(m, PerftLayer))


def adapter_aux_loss(model: nn.Module, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """R's router load-balancing loss over all layers, in the base model's Switch form (padding masked).

    None when the model has no PEFT router or no forward has run since the last call.
    """
    layers = [m for m in perft_layers(model) if m.router is not None and m.router_logits is not None]
    if not layers:
        return None
    logits = tuple(m.router_logits for m in layers)
    for m in layers:
        m.router_logits = None
    return load_balancing_loss_func(logits, layers[0].num_experts, layers[0].top_k, attention_mask)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the frozen base model: PERFT blocks skip their PEFT experts, HF PEFT disables its LoRA."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
        return
    blocks = [m for m in model.modules() if isinstance(m, PerftMoEBlock)]
    for b in blocks:
        b.enabled = False
    try:
        yield
    finally:
        for b in blocks:
            b.enabled = True
