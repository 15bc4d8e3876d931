"""Mixtral (mistralai/Mixtral-8x7B-v0.1): 8 experts, top-2, top-k weights renormalised."""

from perft_exp.models.arch import MoEArchitecture, register

MIXTRAL = register(
    MoEArchitecture(
        model_type="mixtral",
        config_class="MixtralConfig",
        block_class="MixtralSparseMoeBlock",
        num_experts_key="num_local_experts",
        adapter_aux_loss_coef=0.02,
    )
)
