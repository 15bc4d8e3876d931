"""Llama-4 text (meta-llama/Llama-4-Scout-17B-16E): 16 experts, top-1, a shared expert, every layer MoE.

The router returns (dense scores (T, E), logits (T, E)): sigmoid of the top-k logits, 0 elsewhere; the block
scales each expert's *input* by its score. E takes those scores as its p_i (on the PEFT expert's output).
The fused gate/up tensor is (E, D, 2I), gate columns first.
"""

import torch

from perft_exp.models.arch import MoEArchitecture, register


def _routing(block: torch.nn.Module, output: tuple[torch.Tensor, torch.Tensor]):
    scores, logits = output  # (T, E) each
    weights, indices = torch.topk(scores, block.top_k, dim=-1)  # the sigmoid scores of the chosen experts
    return logits, weights, indices


LLAMA4_TEXT = register(
    MoEArchitecture(
        model_type="llama4_text",
        config_class="Llama4TextConfig",
        block_class="Llama4TextMoe",
        num_experts_key="num_local_experts",
        router_attr="router",
        always_active=("shared_expert",),
        router_output=_routing,
        gate_up="transposed",
    )
)
