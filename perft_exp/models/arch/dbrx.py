"""DBRX (databricks/dbrx-base): 16 experts, top-4, counts in the nested `ffn_config`.

The router returns logits only; the block turns them into top-k weights (softmax, top-k, p-norm
renormalisation), which this file asks the block for. The experts are 2-D (E*I, D) stacks
(`experts.mlp.w1/v1/w2`), not fused 3-D tensors: expert_lora and the vector picture do not apply. Attention
has one fused `Wqkv`.
"""

import torch

from perft_exp.models.arch import MoEArchitecture, register


def _routing(block: torch.nn.Module, logits: torch.Tensor):
    weights, indices = block.route_tokens_to_experts(logits)  # (T, k) each, as the block routes its experts
    return logits, weights, indices


DBRX = register(
    MoEArchitecture(
        model_type="dbrx",
        config_class="DbrxConfig",
        block_class="DbrxFFN",
        num_experts_key="ffn_config.moe_num_experts",
        top_k_key="ffn_config.moe_top_k",
        router_attr="router",
        expert_params=(),
        attention_qv=("Wqkv",),
        router_output=_routing,
        router_weight="layer.weight",
        gate_up="none",
    )
)
