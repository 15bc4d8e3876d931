"""Qwen3-MoE (e.g. Qwen/Qwen3-30B-A3B): 128 experts, top-8, no shared expert."""

from perft_exp.models.arch import MoEArchitecture, register

QWEN3_MOE = register(
    MoEArchitecture(
        model_type="qwen3_moe",
        config_class="Qwen3MoeConfig",
        block_class="Qwen3MoeSparseMoeBlock",
        num_experts_key="num_experts",
    )
)
