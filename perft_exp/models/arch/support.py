"""The support table: every MoE family transformers ships, tried live on a tiny random model.

    # markdown table: family, detected or file, R E D S, baselines, aux loss:
    python -m perft_exp.models.arch

A family's tiny model is its default config with every size key shrunk (2 layers, D=32, 8 experts, top-2);
FAMILY_OVERRIDES fixes what a family's config validation needs beyond that. tests/test_families.py runs the
same models through the variants with oracles; this table only reports what runs.
"""

from __future__ import annotations

import functools
import sys

import torch
import transformers

VOCAB = 97
_SHRINK = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    d_model=32,
    num_hidden_layers=2,
    n_layers=2,
    num_attention_heads=4,
    n_heads=4,
    num_key_value_heads=4,
    head_dim=8,
    intermediate_size=16,
    moe_intermediate_size=16,
    ffn_hidden_size=16,
    shared_expert_intermediate_size=16,
    expert_intermediate_size=16,
    kv_lora_rank=8,
    q_lora_rank=8,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
    n_group=2,
    topk_group=1,
    first_k_dense_replace=0,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
    n_shared_experts=1,
    num_shared_experts=1,
    full_attention_interval=2,
    attn_layer_period=2,
    attn_layer_offset=1,
    expert_layer_period=1,
    expert_layer_offset=0,
)
_NUM_EXPERTS_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "moe_topk")
FAMILY_OVERRIDES: dict[str, dict] = {
    "zaya": {"num_experts_per_tok": 1},  # ZAYA routes top-1 only
    "gemma4_text": {"enable_moe_block": True, "top_k_experts": 2},  # the default config is dense
    # qwen4_exp_text: its full-attention layers need an indexer budget the default config lacks.
    "qwen4_exp_text": {"layer_types": None},
    # DBRX keeps its sizes in nested configs; the default has no rope_theta and no clip_qkv.
    "dbrx": {
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "max_seq_len": 128,
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 16, "moe_num_experts": 8, "moe_top_k": 2},
    },
    "mimo_v2_flash": {"num_key_value_heads": 2},  # its sliding-window heads are sized from the full ones
    "granitemoehybrid": {"mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 1, "mamba_d_state": 8},
}
# Multimodal wrappers (their text model is its own row) and configs that do not shrink to a tiny model here.
NOT_TRIED: dict[str, str] = {
    "dots3_note": "multimodal wrapper of dots3_note_text",
    "gemma4": "multimodal wrapper of gemma4_text",
    "llama4": "multimodal wrapper of llama4_text",
    "qwen3_5_moe": "multimodal wrapper of qwen3_5_moe_text",
    "qwen4_exp": "multimodal wrapper of qwen4_exp_text",
    "longcat_flash": "its default config keeps a 70M-parameter embedding: no tiny model",
    "bailing_hybrid": "default config does not shrink to a tiny model (top-k index out of range)",
    "lfm2_moe": "default config does not shrink (layer types not derived from the layer count)",
    "dots3_note_text": "default config does not shrink (num_key_value_heads must equal num_attention_heads)",
}


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
    kinds = list(dict.fromkeys(defaults.get("layer_types") or []))
    if kinds and all(isinstance(k, str) for k in kinds):  # two layers of two kinds: a hybrid keeps both
        kwargs["layer_types"] = (kinds * 2)[:2]
    kwargs.update(FAMILY_OVERRIDES.get(model_type, {}))
    return cls(**kwargs)


def tiny_family_model(model_type: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny random model of `model_type`, every tensor given a finite non-zero value, in eval mode."""
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


def _runs(model_type: str, variant: str, **spec) -> str:
    """'yes' when `variant` attaches and trains one step on the tiny model; 'n/a' or the one-line failure."""
    from perft_exp.adapters.config import PerftConfig
    from perft_exp.adapters.model import apply_adapters
    from perft_exp.models.arch import NotApplicable

    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    try:
        model = apply_adapters(
            tiny_family_model(model_type), PerftConfig(variant=variant, bottleneck=4, **spec)
        )
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
    except NotApplicable:
        return "n/a"
    except Exception as e:  # noqa: BLE001 - the table reports it
        return f"fails: {type(e).__name__}"
    return "yes"


def _base_aux_loss(model: transformers.PreTrainedModel) -> str:
    if not hasattr(model.config, "output_router_logits"):
        return "no"
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids, output_router_logits=True)
    return "yes" if getattr(out, "aux_loss", None) is not None else "no"


def support_row(model_type: str) -> dict:
    """One family's row: how its facts are known and what runs on it."""
    from perft_exp.models.arch import UnsupportedModel, architecture_for

    row = {"family": model_type}
    if model_type in NOT_TRIED:
        return {**row, "facts": "not tried", "note": NOT_TRIED[model_type]}
    try:
        model = tiny_family_model(model_type)
    except Exception as e:  # noqa: BLE001 - a config this release cannot shrink: the table says so
        return {**row, "facts": "not built", "note": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    try:
        arch = architecture_for(model)
    except UnsupportedModel as e:
        return {**row, "facts": "unsupported", "note": str(e).split("; a family file")[0]}
    row["facts"] = "detected" if arch.detected else "file"
    perft = {
        "R": dict(num_experts=4, top_k=2),
        "E": dict(num_experts=None, top_k=None),
        "D": dict(num_experts=2),
        "S": dict(num_experts=None),
    }
    for name, spec in perft.items():
        row[name] = _runs(model_type, name, **spec)
    for name in ("qv_lora", "router_lora", "expert_lora"):
        row[name] = _runs(model_type, name, num_experts=None, top_k=None)
    row["base aux loss"] = _base_aux_loss(model)
    return row


COLUMNS = ("family", "facts", "R", "E", "D", "S", "qv_lora", "router_lora", "expert_lora", "base aux loss")


def support_table(families: tuple[str, ...] | None = None) -> str:
    """The markdown support table; families transformers ships but we do not run get their one-line reason."""
    rows = [support_row(f) for f in (families or moe_families())]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    notes = []
    for row in rows:
        if "note" in row:
            notes.append(f"- `{row['family']}` ({row['facts']}): {row['note']}")
            continue
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")
    header = (
        f"MoE families in transformers {transformers.__version__}: {len(rows)}, "
        f"runnable here: {len(lines) - 2}"
    )
    return "\n".join([header, "", *lines, "", "Not run:", *notes])


def main() -> None:
    """Print the support table of the families named on the command line, or of all."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    print(support_table(tuple(sys.argv[1:]) or None))
