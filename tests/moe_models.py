"""Tiny random MoE models of every supported architecture, built from the HF config classes."""

from __future__ import annotations

import copy
import functools

import torch
import transformers

from perft_exp.models.arch.support import moe_families, tiny_family_model  # noqa: F401 - re-exported

VOCAB = 97  # tiny_family_model uses the same (perft_exp/models/arch/support.py)

TINY_CONFIGS = {
    "olmoe": lambda: transformers.OlmoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ),
    "mixtral": lambda: transformers.MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=6,
        num_experts_per_tok=2,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    ),
}
ARCHS = sorted(TINY_CONFIGS)


def tiny_moe(arch: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A fresh copy of the (cached) tiny model: HF's from_config is slow next to a deepcopy."""
    return copy.deepcopy(_build(arch, seed, tuple(sorted(overrides.items(), key=str))))


@functools.cache
def _build(arch: str, seed: int, overrides: tuple) -> transformers.PreTrainedModel:
    config = TINY_CONFIGS[arch]()
    for k, v in overrides:
        setattr(config, k, list(v) if isinstance(v, tuple) else v)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    # HF leaves some fused expert weights uninitialised under from_config; give every tensor a value.
    with torch.no_grad():
        for p in model.parameters():
            if not torch.isfinite(p).all() or p.abs().max() == 0:
                p.normal_(0, 0.05)
    return model.eval()


def batch(seed: int = 1, b: int = 3, t: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, :2] = 0  # some left padding
    return {"input_ids": ids, "attention_mask": mask}


def perft_model(variant: str, **kw) -> transformers.PreTrainedModel:
    """The tiny OLMoE with a PERFT variant attached (r=4, no dropout), in eval mode: R (Top2/4), E, D (3)."""
    from perft_exp.adapters.config import PerftConfig
    from perft_exp.adapters.model import apply_adapters

    spec = {
        "R": dict(num_experts=4, top_k=2),
        "E": dict(num_experts=None, top_k=None),
        "D": dict(num_experts=3),
    }
    cfg = PerftConfig(variant=variant, bottleneck=4, dropout=0.0, **{**spec[variant], **kw})
    return apply_adapters(tiny_moe("olmoe"), cfg).eval()


# --- every MoE family transformers ships, as a tiny random model (perft_exp/models/arch/support.py) ---------


@functools.cache
def _build_family(model_type: str, seed: int) -> transformers.PreTrainedModel:
    return tiny_family_model(model_type, seed)


def tiny_family(model_type: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A fresh copy of the tiny random model of any MoE family (cached per process)."""
    return copy.deepcopy(_build_family(model_type, seed))
