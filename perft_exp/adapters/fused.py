"""E inside the frozen experts' own grouped computation: one sort, one gather and one sum for both.

PERFT-E puts one PEFT expert beside each FFN expert and routes it by the frozen router, so a token's PEFT
experts are exactly the FFN experts it reaches, with the same weights:

    y_t = sum_{i in S_t} p_ti (expert_i(x_t) + peft_i(x_t))

Computed beside the block (perft_exp.adapters.experts, `grouped`), E repeats the frozen experts' bookkeeping:
it sorts the (token, expert) pairs, gathers their (S, D) inputs and sums their (S, D) outputs back into the
tokens, forward and backward. S = T x k (8x the layer input at OLMoE's top-8), so those passes are most of
E's cost beyond its matmuls (docs/benchmarks.md). Here the frozen experts' grouped computation runs once
with E's pair outputs added to each pair's expert output before the routing weight: transformers'
`grouped_mm` experts forward (transformers.integrations.moe) with two more grouped matmuls per E adapter.

It applies (`impl=auto` on a call the grouped path would take, or `impl=fused`) on the families whose block
output is the experts' output plus terms that do not depend on it (FAMILIES), when the block's experts are
transformers' fused experts (`use_experts_implementation`: the gate/up and down tensors, the flags that
say their layout) running the `grouped_mm` kernel, and receive the frozen router's very own top-k output
and input, so that E's routing and input are what the hook path would use. Otherwise the PEFT experts run
beside the block as before (perft_exp.adapters.tuner). The frozen part follows transformers' grouped_mm
experts forward step for step, with its grouped-linear helper; `tests/test_fused.py` holds the two paths
equal on every tiny architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from perft_exp.adapters.experts import cast

try:  # transformers' grouped linear: its kernel choice and fallbacks (the pinned version's helper)
    from transformers.integrations.moe import _grouped_linear
except ImportError:  # pragma: no cover - another transformers: the PEFT experts run beside the block
    _grouped_linear = None

_FLAGS = ("has_gate", "has_bias", "is_transposed", "has_post_expert_norm", "num_experts")
# The families whose MoE block returns its experts' output plus terms that do not depend on it (a shared
# expert added, as in Qwen2-MoE or DeepSeek): only there is E inside the experts the same as E beside the
# block. Left out: axk1 (a norm on the block's output), cohere2_moe (experts and shared expert may be
# averaged), minimax_m3_vl_text (the experts' output rescaled), the families without fused expert tensors
# (dbrx, llama4_text), and any family not checked (a detected one). tests/test_fused.py holds every listed
# family's two paths equal.
FAMILIES = frozenset(
    """
    afmoe aria_text axk2 deepseek_v2 deepseek_v3 deepseek_v32 dots1 ernie4_5_moe exaone_moe flex_olmo
    glm4_moe glm4_moe_lite glm_moe_dsa gpt_oss granitemoe granitemoe_swa granitemoehybrid granitemoeshared
    hunyuan_v1_moe hy_v3 hy_v4 inkling2_text jamba kimi_linear kolibri1 laguna mellum mimo_v2_flash minimax
    minimax_m2 mixtral nemotron_h olmoe phimoe qwen2_moe qwen3_5_moe_text qwen3_moe qwen3_next
    qwen4_exp_text solar_open
    """.split()
)


def fusable_experts(model_type: str, experts: nn.Module | None) -> bool:
    """Whether E can run inside `experts`, a block's experts module in a model of `model_type`: a family of
    FAMILIES, whose experts are a transformers fused-experts module (its layout flags set by
    `use_experts_implementation`), expert-parallel sharding aside."""
    return (
        _grouped_linear is not None
        and model_type in FAMILIES
        and experts is not None
        and all(hasattr(experts, flag) for flag in _FLAGS)
        and not getattr(experts, "_is_expert_parallel", False)
        and hasattr(experts, "down_proj")
        and hasattr(experts, "gate_up_proj" if experts.has_gate else "up_proj")
    )


def runs_grouped_mm(experts: nn.Module) -> bool:
    """Whether the experts' kernel is now transformers' `grouped_mm` (the one this path stands in for)."""
    config = getattr(experts, "config", None)
    return getattr(config, "_experts_implementation", None) == "grouped_mm"


def grouped_experts_forward(
    experts: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    layers: list,
) -> torch.Tensor:
    """The frozen experts' output with the E adapters `layers` (PerftLayers) added:
    sum_k w_tk (expert_{e_tk}(x_t) + sum_layers peft_{e_tk}(x_t)) (T, D), for hidden_states (T, D) and the
    router's top-k index and weights (T, k). The frozen part follows transformers' grouped_mm experts forward
    step for step (transformers.integrations.moe)."""
    num_tokens, top_k = top_k_index.shape
    weights = top_k_weights.reshape(-1)  # (S,), S = T*k pairs
    expert_sorted, perm = torch.sort(top_k_index.reshape(-1))
    token = perm // top_k  # token of each expert-sorted pair
    xs = hidden_states[token]  # (S, D)
    weights = weights[perm]
    # Pairs per expert by a histogram (transformers': its shape is the number of experts whatever the data).
    on_cpu = hidden_states.device.type in ("cpu", "mps")
    counts = torch.histc(
        expert_sorted.float() if on_cpu else expert_sorted.int(),
        bins=experts.num_experts,
        min=0,
        max=experts.num_experts - 1,
    )
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)

    def bias(name: str) -> torch.Tensor | None:
        return getattr(experts, name)[expert_sorted] if experts.has_bias else None

    up = "gate_up_proj" if experts.has_gate else "up_proj"
    out = _grouped_linear(
        xs, getattr(experts, up), offsets, bias=bias(f"{up}_bias"), is_transposed=experts.is_transposed
    )
    out = experts._apply_gate(out) if experts.has_gate else experts.act_fn(out)
    out = _grouped_linear(
        out, experts.down_proj, offsets, bias=bias("down_proj_bias"), is_transposed=experts.is_transposed
    )
    if experts.has_post_expert_norm:
        out = experts.post_expert_norm(out)
    # Each E adapter's pair outputs join their experts' before the routing weight, added in place: the frozen
    # matmul's output is kept by nothing for backward (its weight is frozen, and the product with the routing
    # weight keeps the sum), so this saves an (S, D) temporary.
    for layer in layers:
        peft = layer.experts
        keep = peft.draw_keep(hidden_states, top_k)
        keep = None if keep is None else keep.reshape(num_tokens * top_k, -1).index_select(0, perm)
        dtype = peft.A.dtype
        shared = xs if xs.dtype == dtype else None  # else gathered from x in the adapter's dtype
        pairs = peft.sorted_pairs(shared, cast(hidden_states, dtype), token, offsets, keep)  # (S, D)
        out = out.add_(cast(pairs, out.dtype))
        # What the routing statistics read, as the hook path records it.
        layer.__dict__["routing_indices"], layer.__dict__["routing_taken"] = top_k_index, None
    out = out * weights.unsqueeze(-1)  # (S, D)
    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = torch.arange(perm.size(0), device=perm.device)
    out = out[inv_perm].view(num_tokens, top_k, -1).sum(dim=1)
    return out.to(hidden_states.dtype)
