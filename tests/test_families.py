"""R, E, D, S and the LoRA baselines on every MoE family transformers ships (tiny random models, one process).

One test per family: the architecture is detected (or read from its family file), every variant runs forward
and backward with adapters on every MoE block, only adapter parameters get gradients, switching the adapters
off gives the base logits, and E's batched output equals a loop over the experts weighted by the routing
exactly as the family's router returns it (DeepSeek's scaled sigmoid, gpt-oss's softmax over the top-k,
Llama-4's scores). Families left out are named in SKIPPED with the reason.
"""

from __future__ import annotations

import pytest
import torch
from moe_models import batch, moe_families, tiny_family

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.counting import count_parameters
from perft_exp.adapters.model import adapters_disabled, apply_adapters, perft_layers
from perft_exp.adapters.routing_stats import router_angles, track_routing
from perft_exp.adapters.tuner import perft_tuner_layers
from perft_exp.adapters.variants import LORA_BASELINES
from perft_exp.analysis.routing import vector_picture
from perft_exp.models.arch import NotApplicable, UnsupportedModel, architecture_for, find_moe_blocks
from perft_exp.models.arch.support import NOT_TRIED

# Detection finds no block PERFT can attach to, or a router output E cannot read:
# the one line it says is tested.
UNSUPPORTED = {
    "beam": "no MoE block found",
    "doge": "no MoE block found",  # DogeCDMoE: an expert bank of embeddings, not routed FFN experts
    "flint": "no MoE block found",
    "gemma4_text": "sit directly in the decoder layer",
    "jetmoe": "no MoE block found",  # mixture of attention and MLP heads: no `experts` child beside a router
    "inkling_text": "returns",  # four tensors: logits, weights, indices and a per-token scale
    "zaya": "returns",  # four tensors, one extra expert slot
    "deepseek_v4": "does not run on hidden states alone",  # hash router: reads input_ids
}
SKIPPED = {**NOT_TRIED, **{f: f"unsupported: {why}" for f, why in UNSUPPORTED.items()}}
FAMILIES = [f for f in moe_families() if f not in SKIPPED]
VARIANTS = {
    "R": dict(variant="R", num_experts=4, top_k=2),
    "E": dict(variant="E", num_experts=None, top_k=None),
    "D": dict(variant="D", num_experts=2),
    "S": dict(variant="S", num_experts=None),
}


def _logits(model, inputs, **kw) -> torch.Tensor:
    return model(**inputs, **kw).logits


def _attach(model_type: str, spec: dict):
    model = tiny_family(model_type)
    cfg = PerftConfig(bottleneck=4, dropout=0.0, init="zero_b", **spec)
    model = apply_adapters(model, cfg)
    with torch.no_grad():
        for layer in perft_layers(model):
            layer.experts.B.normal_(0, 0.1)  # a PEFT path that contributes
    return model


def _check_training_step(model, inputs, label: str) -> None:
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, f"{label}: nothing trains"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), f"{label}: no gradient"
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"{label}: frozen {n} got a gradient"
            assert torch.equal(p, frozen[n]), f"{label}: frozen {n} changed"
    model.eval()


def _check_statistics(model, arch, inputs, label: str) -> None:
    """Routing loads, router angles, the vector picture and parameter counts:
    a value, or one NotApplicable line."""
    with torch.no_grad(), track_routing(model) as stats:
        model(**inputs)
    tokens = int(inputs["attention_mask"].sum())
    for row in stats.per_layer():
        assert sum(row["load"]) == tokens * row["top_k"], label
    for statistic in (router_angles, vector_picture):
        try:
            statistic(model)
        except NotApplicable as e:
            assert "\n" not in str(e) and (arch.router_weight is None or arch.gate_up == "none"), (label, e)
    counts = count_parameters(model)
    assert 0 < counts.activated_trainable <= counts.trainable and counts.base_active < counts.base_total, (
        label
    )


def _E_oracle(block: torch.nn.Module, arch, x: torch.Tensor) -> torch.Tensor:
    """The base block plus sum_{i in S} p_i expert_i(x), one token and one expert at a time, with (S, p) the
    family's routing exactly as its router returns it (captured here by our own hook)."""
    seen = []
    handle = arch.router(block).register_forward_hook(lambda m, a, o: seen.append(o))
    block.perft.enable_adapters(False)
    try:
        base = block(x)
    finally:
        block.perft.enable_adapters(True)
        handle.remove()
    base = base[0] if isinstance(base, tuple) else base
    _, weights, indices = arch.routing(block, seen[0])
    layer = block.perft.perft_layer["default"]
    A, B, s = layer.experts.A, layer.experts.B, layer.experts.scaling
    f = layer.experts.act or (lambda t: t)
    h = x.reshape(-1, x.shape[-1]).to(A.dtype)
    y = torch.zeros_like(h)
    for t in range(h.shape[0]):
        for k in range(indices.shape[1]):
            e = int(indices[t, k])
            y[t] += weights[t, k].to(h.dtype) * (f(h[t] @ A[e]) @ B[e]) * s
    return base + y.view_as(base).to(base.dtype)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_variant_on_every_family(model_type):
    torch.manual_seed(0)
    base = tiny_family(model_type)
    arch = architecture_for(base)
    num_blocks = len(find_moe_blocks(base, arch))
    assert num_blocks >= 1
    inputs = batch()
    with torch.no_grad():
        reference = _logits(base, inputs)

    for name, spec in VARIANTS.items():
        label = f"{model_type} {name}"
        model = _attach(model_type, spec)
        blocks = [block for _, block, _ in perft_tuner_layers(model)]
        assert len(blocks) == num_blocks, f"{label}: adapters on {len(blocks)} of {num_blocks} MoE blocks"
        with torch.no_grad():
            adapted = _logits(model, inputs)
            with adapters_disabled(model):
                off = _logits(model, inputs)
        torch.testing.assert_close(off, reference, msg=f"{label}: adapters off is not the base model")
        assert not torch.allclose(adapted, reference), f"{label}: the adapters change nothing"
        _check_statistics(model, arch, inputs, label)
        if name == "E":
            x = torch.randn(1, 5, model.config.hidden_size)
            with torch.no_grad():
                fast = blocks[0](x)
                fast = fast[0] if isinstance(fast, tuple) else fast
                torch.testing.assert_close(fast, _E_oracle(blocks[0], arch, x), rtol=1e-4, atol=1e-5)
        _check_training_step(model, inputs, label)

    for name in LORA_BASELINES:
        label = f"{model_type} {name}"
        try:
            model = apply_adapters(
                tiny_family(model_type), PerftConfig(variant=name, bottleneck=4, dropout=0.0)
            )
        except NotApplicable:
            assert name != "qv_lora" or not arch.attention_qv, label
            continue
        _check_training_step(model, inputs, label)


def test_the_skip_list_names_only_families_transformers_ships():
    assert set(SKIPPED) <= set(moe_families())


@pytest.mark.parametrize("model_type", sorted(UNSUPPORTED))
def test_an_unsupported_family_is_refused_in_one_line(model_type):
    with pytest.raises(UnsupportedModel, match=UNSUPPORTED[model_type]) as e:
        architecture_for(tiny_family(model_type))
    assert "\n" not in str(e.value) and str(e.value).startswith(model_type)


# MiniMax collects router logits by module path:
# PERFT sits beside the block, so every path stays where it was.
@pytest.mark.parametrize("model_type", FAMILIES)
def test_router_logits_are_collected_with_perft_attached(model_type):
    if not hasattr(tiny_family(model_type).config, "output_router_logits"):
        pytest.skip(f"{model_type} has no output_router_logits")
    model = _attach(model_type, VARIANTS["E"])
    with torch.no_grad():
        out = model(**batch(), output_router_logits=True)
    assert out.router_logits, f"{model_type}: no router logits collected with PERFT attached"


@pytest.mark.parametrize(
    "model_type, layout",
    [
        ("olmoe", "concatenated"),
        ("gpt_oss", "interleaved_transposed"),
        ("llama4_text", "transposed"),
        ("aria_text", "transposed"),
    ],
)
def test_gate_rows_follow_the_experts_layout(model_type, layout):
    """The gate rows the vector picture reads are the ones the expert computes its gate from."""
    model = tiny_family(model_type)
    arch = architecture_for(model)
    assert arch.gate_up == layout
    block = find_moe_blocks(model, arch)[0][1]
    experts = arch.experts(block)
    w = getattr(experts, arch.expert_params[0])[0]  # expert 0, as stored
    x = torch.randn(3, model.config.hidden_size)
    gate_up = x @ w if layout.endswith("transposed") else x @ w.T  # (3, 2I), in the expert's own layout
    gate = gate_up[:, 0::2] if layout.startswith("interleaved") else gate_up[:, : gate_up.shape[1] // 2]
    torch.testing.assert_close(x @ arch.gate_rows(block)[0].T, gate)
