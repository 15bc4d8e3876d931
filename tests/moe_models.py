"""Tiny random MoE models of every supported architecture, built from the HF config classes."""

from __future__ import annotations

import copy
import functools

import torch
import transformers

VOCAB = 97

TINY_CONFIGS = {
    "olmoe": lambda: transformers.OlmoeConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ),
    "mixtral": lambda: transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=6, num_experts_per_tok=2,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=8, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ),
}  # fmt: skip
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


# --- every MoE family transformers ships, as a tiny random model ----------------------------------------
# The default config of each type, with every size key it has shrunk; FAMILY_OVERRIDES fixes what a family's
# config validation needs beyond that. Families left out, and why: SKIPPED.
_SHRINK = dict(
    vocab_size=VOCAB, hidden_size=32, d_model=32, num_hidden_layers=2, n_layers=2, num_attention_heads=4,
    n_heads=4, num_key_value_heads=4, head_dim=8, intermediate_size=16, moe_intermediate_size=16,
    ffn_hidden_size=16, shared_expert_intermediate_size=16, expert_intermediate_size=16, kv_lora_rank=8,
    q_lora_rank=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_group=2, topk_group=1,
    first_k_dense_replace=0, max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    n_shared_experts=1, num_shared_experts=1,
)  # fmt: skip
_NUM_EXPERTS_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "moe_topk")
FAMILY_OVERRIDES: dict[str, dict] = {
    "zaya": {"num_experts_per_tok": 1},  # ZAYA routes top-1 only
    "mimo_v2_flash": {"num_key_value_heads": 2},  # its sliding-window heads are sized from the full ones
    "granitemoehybrid": {"mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 1, "mamba_d_state": 8},
}
SKIPPED: dict[str, str] = {}


def _mentions_experts(config: dict) -> bool:
    return any(
        "expert" in str(k) or k in _TOP_K_KEYS or (isinstance(v, dict) and _mentions_experts(v))
        for k, v in config.items()
    )


@functools.cache
def moe_families() -> tuple[str, ...]:
    """Every causal-LM model type of the installed transformers whose default config speaks of experts."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out = []
    for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        try:
            config = CONFIG_MAPPING[model_type]().to_dict()
        except Exception:  # noqa: BLE001 - a type whose default config does not build is not a candidate
            continue
        if _mentions_experts(config):
            out.append(model_type)
    return tuple(out)


def family_config(model_type: str) -> transformers.PretrainedConfig:
    """`model_type`'s default config with its sizes shrunk: 2 layers, D=32, 8 experts, top-2."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    defaults = cls().to_dict()
    kwargs = {k: v for k, v in _SHRINK.items() if k in defaults}
    kwargs.update({k: 8 for k in _NUM_EXPERTS_KEYS if k in defaults})
    kwargs.update({k: 2 for k in _TOP_K_KEYS if k in defaults})
    kwargs.update(FAMILY_OVERRIDES.get(model_type, {}))
    return cls(**kwargs)


@functools.cache
def _build_family(model_type: str, seed: int) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(family_config(model_type))
    model.config.use_cache = (
        False  # hybrids with no attention layer in two layers cannot report a cache length
    )
    with torch.no_grad():
        for p in model.parameters():
            if not torch.isfinite(p).all() or (p.numel() and p.abs().max() == 0):
                p.normal_(0, 0.05)
    return model.eval()


def tiny_family(model_type: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A fresh copy of the tiny random model of any MoE family (cached per process)."""
    return copy.deepcopy(_build_family(model_type, seed))
