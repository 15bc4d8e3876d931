"""Qwen2-MoE (e.g. Qwen/Qwen1.5-MoE-A2.7B): routed experts plus a sigmoid-gated shared expert.

PERFT's PEFT experts sit in parallel with the whole block, shared expert included.
"""

from perft_exp.models.arch import MoEArchitecture, register

QWEN2_MOE = register(
    MoEArchitecture(
        model_type="qwen2_moe",
        config_class="Qwen2MoeConfig",
        block_class="Qwen2MoeSparseMoeBlock",
        num_experts_key="num_experts",
        always_active=("shared_expert", "shared_expert_gate"),
    )
)
