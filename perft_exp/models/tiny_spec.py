"""The tiny models' specs: architecture and pre-training recipe, and the build key that names their cache.

Torch-free, so the run directory (perft_exp/run_dir.py) can key a run on the tiny model's build without
importing the builder (perft_exp/models/tiny/build.py); the cache (perft_exp/models/tiny/cache.py) names its
directories by the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from perft_exp.data import synthetic

# Bump when the build recipe (perft_exp/models/tiny/build.py) changes in a way the spec does not capture.
BUILD_VERSION = "2"


@dataclass(frozen=True)
class TinySpec:
    """Architecture and pre-training recipe of one tiny model."""

    arch: str  # "olmoe" | "mixtral"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    num_experts: int
    num_experts_per_tok: int
    intermediate_size: int  # per expert
    norm_topk_prob: bool  # OLMoE: False; Mixtral always renormalises
    vocab_size: int  # BPE target; the model's vocab is the trained tokenizer's size
    max_position_embeddings: int = 512
    router_aux_loss_coef: float = 0.01
    # Pre-training
    steps: int = 800
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    warmup_steps: int = 30
    corpus_docs: int = 12000
    seed: int = 0

    def __post_init__(self) -> None:
        assert self.arch in ("olmoe", "mixtral"), self.arch
        assert self.hidden_size % self.num_attention_heads == 0
        assert self.num_attention_heads % self.num_key_value_heads == 0
        assert 1 <= self.num_experts_per_tok <= self.num_experts
        assert self.arch == "olmoe" or self.norm_topk_prob, "Mixtral always renormalises top-k weights"

    def key(self) -> str:
        """Short hash of everything that determines the built weights."""
        blob = json.dumps(
            {"spec": asdict(self), "data": synthetic.CORPUS_VERSION, "build": BUILD_VERSION},
            sort_keys=True,
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


TINY_SPECS: dict[str, TinySpec] = {
    # OLMoE-like: no GQA, top-k weights not renormalised, many small experts.
    "tiny_olmoe": TinySpec(
        arch="olmoe",
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=8,
        num_experts_per_tok=2,
        intermediate_size=128,
        norm_topk_prob=False,
        vocab_size=2048,
    ),
    # Mixtral-like: GQA, 8 experts top-2, renormalised.
    "tiny_mixtral": TinySpec(
        arch="mixtral",
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        intermediate_size=128,
        norm_topk_prob=True,
        vocab_size=2048,
        router_aux_loss_coef=0.02,
    ),
}
# The control: same architecture, tokenizer and initialisation as tiny_olmoe, no pre-training. What a
# fine-tuned model scores on it is what format learning alone scores, knowing nothing of the world.
TINY_SPECS["tiny_olmoe_random"] = replace(TINY_SPECS["tiny_olmoe"], steps=0)
