"""OLMoE (allenai/OLMoE-1B-7B-0924): 64 experts, top-8, top-k weights not renormalised."""

from perft_exp.models.arch import MoEArchitecture, register

OLMOE = register(
    MoEArchitecture(
        model_type="olmoe",
        config_class="OlmoeConfig",
        block_class="OlmoeSparseMoeBlock",
        num_experts_key="num_experts",
        adapter_aux_loss_coef=0.01,
    )
)
