"""Tiny stand-ins for the named hub checkpoints (conf/model/<name>.yaml), written in the hub's layout.

`write_standin(name, out, tokenizer_dir)`: the YAML's architecture numbers with every size shrunk (the
structure kept: shared experts, dense first layers, MLA ranks, linear-attention layers), random weights, saved
by transformers' own `save_pretrained` (which writes per-expert tensors where the hub has them) in two
safetensors shards with an index, and a transformers-4-style config.json (`rope_theta` at the top level,
a 4.x version).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from perft_exp.config import compose

SIZES = dict(
    hidden_size=32,
    intermediate_size=32,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
    intermediate_size_mlp=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    kv_lora_rank=8,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    full_attention_interval=2,
    max_position_embeddings=256,
    sliding_window=16,
    attention_chunk_size=64,
)
EXPERTS = {"num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4}
TOP_K = {"num_experts_per_tok": 2}
MLA = ("deepseek_v2", "deepseek_v3")  # MLA attention repeats no KV heads: one per query head


def standin_config(name: str, vocab_size: int) -> transformers.PretrainedConfig:
    model = compose([f"model={name}"]).model
    arch = OmegaConf.to_container(model.architecture, resolve=True)
    shrink = {**SIZES, **EXPERTS}
    arch.update({k: v for k, v in shrink.items() if k in arch})
    arch.update({k: min(v, arch[k]) for k, v in TOP_K.items() if k in arch})
    if model.model_type in MLA:
        arch["num_key_value_heads"] = arch["num_attention_heads"]
    arch.update(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return CONFIG_MAPPING[model.model_type](**arch)


def write_standin(name: str, out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    config = standin_config(name, len(tokenizer))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if not torch.isfinite(p).all() or (p.numel() and p.abs().max() == 0):
                p.normal_(0, 0.05)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    for fraction in (0.5, 0.6, 0.7, 0.8, 0.9):  # the greedy sharding needs a bound that gives exactly two
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out, max_shard_size=f"{int(size * fraction) // 1000 + 1}KB")
        if len(list(out.glob("*.safetensors"))) == 2:
            break
    assert len(list(out.glob("*.safetensors"))) == 2, f"{name}: no two-shard split"
    for f in Path(tokenizer_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    _transformers4_config(out / "config.json")
    return out


def _transformers4_config(path: Path) -> None:
    """The hub's config.json as transformers 4.x wrote it: rope_theta at the top level, a 4.x version."""
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters", None) or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    config["transformers_version"] = "4.57.1"
    config.pop("dtype", None)
    config["torch_dtype"] = "float32"
    path.write_text(json.dumps(config, indent=2) + "\n")
