"""E inside the frozen experts' grouped computation (perft_exp.adapters.fused): the same outputs and gradients
as E beside the block, on every family whose experts allow it, and the plain path wherever they do not."""

from __future__ import annotations

import pytest
import torch
from moe_models import batch, tiny_family, tiny_moe
from test_families import FAMILIES

import perft_exp.adapters.tuner as tuner
from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.fused import FAMILIES as fused_families
from perft_exp.adapters.model import adapters_disabled, apply_adapters, perft_layers
from perft_exp.adapters.routing_stats import perft_blocks
from perft_exp.adapters.tuner import PerftPeftConfig, perft_tuner_layers

E = dict(variant="E", num_experts=None, top_k=None)


@pytest.fixture
def fused_calls(monkeypatch) -> list:
    """Every call of the fused computation, recorded (the block's experts module, the E layers it took)."""
    calls = []
    run = tuner.grouped_experts_forward

    def spy(experts, hidden, index, weights, layers):
        calls.append((experts, tuple(layers)))
        return run(experts, hidden, index, weights, layers)

    monkeypatch.setattr(tuner, "grouped_experts_forward", spy)
    return calls


def _E(base: torch.nn.Module, impl: str, seed: int = 1, **kw) -> torch.nn.Module:
    """E on a copy of `base`, its PEFT experts random (seeded: two impls get the same weights)."""
    import copy

    cfg = PerftConfig(bottleneck=8, init="zero_b", impl=impl, **{"dropout": 0.0, **E, **kw})
    model = apply_adapters(copy.deepcopy(base), cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in perft_layers(model):
            layer.experts.A.normal_(0, 0.3)
            layer.experts.B.normal_(0, 0.1)
    return model


def _step(model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training-mode loss and every adapter gradient."""
    model.train()
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _assert_same_step(a, b, msg: str, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a[0], b[0], atol=atol, rtol=1e-4, msg=msg)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], atol=atol, rtol=1e-3, msg=f"{msg}: {name}")


@pytest.mark.parametrize("model_type", FAMILIES)
def test_fused_E_equals_E_beside_the_block_on_every_family(model_type, fused_calls):
    """On a listed family every block takes E in; elsewhere none does. Either way E is what it is beside."""
    base = tiny_family(model_type)
    inputs = batch()
    beside = _step(_E(base, "grouped"), inputs)
    assert not fused_calls
    model = _E(base, "fused")
    fused = _step(model, inputs)
    _assert_same_step(fused, beside, model_type)
    blocks = [block for _, block, _ in perft_tuner_layers(model)]
    expected = {id(block.experts) for block in blocks} if model_type in fused_families else set()
    assert {id(experts) for experts, _ in fused_calls} == expected


def test_the_fused_families_are_families_transformers_ships():
    assert fused_families <= set(FAMILIES)


def test_the_common_families_run_E_inside_their_experts(fused_calls):
    for model_type in ("olmoe", "mixtral", "qwen2_moe", "qwen3_moe"):
        model = _E(tiny_moe(model_type), "fused")
        assert all(layer._base_experts is not None for _, _, layer in perft_tuner_layers(model)), model_type
        _step(model, batch())
    assert fused_calls


def test_auto_takes_the_fused_path_on_training_sized_calls_only(fused_calls):
    """64 experts top-8 at r=16 (OLMoE's routing): a training batch goes grouped, so fused; one token
    decoding goes select, beside the block."""
    base = tiny_moe("olmoe", num_experts=64, num_experts_per_tok=8)
    model = _E(base, "auto")
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.randint(3, 97, (1, 1)))
        assert not fused_calls
        model(input_ids=torch.randint(3, 97, (8, 16)))  # 128 tokens x 8 = 1024 pairs
    assert len(fused_calls) == model.config.num_hidden_layers


def test_expert_scope_dropout_draws_the_same_masks_in_both_paths():
    base = tiny_moe("olmoe")
    inputs = batch()
    steps = []
    for impl in ("grouped", "fused"):
        model = _E(base, impl, dropout=0.3)
        torch.manual_seed(7)
        steps.append(_step(model, inputs))
    _assert_same_step(steps[1], steps[0], "dropout")
    torch.manual_seed(8)
    assert not torch.equal(_step(model, inputs)[0], steps[1][0]), "the masks do not change with the seed"


def _block_step(model, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """The first PERFT block's output and the gradients of its input and PEFT weights, in fp32."""
    block = perft_blocks(model)[0][2]
    x = x.detach().to(next(block.parameters()).dtype).requires_grad_(True)
    y = block(x)
    y.backward(g.to(y.dtype))
    layer = block.perft.perft_layer["default"]
    return [t.detach().float() for t in (y, x.grad, layer.experts.A.grad, layer.experts.B.grad)]


@pytest.mark.parametrize("adapter_dtype", ["float32", "model"])
def test_a_bf16_base_with_fp32_or_bf16_experts(adapter_dtype, fused_calls):
    """fp32 PEFT experts on a bf16 base gather their own fp32 inputs; bf16 ones share the frozen experts'.
    The two paths round differently (fused: each pair's output to bf16 before the routing weight; beside: each
    token's sum), so each is held to the block in fp32 with the same weights: within twice the other's error.
    (One block: through a whole model a rounding flips some later top-k choice, in either path.)"""
    base = tiny_moe("olmoe").to(torch.bfloat16)
    torch.manual_seed(0)
    x = torch.randn(3, 7, base.config.hidden_size)
    g = torch.randn(3, 7, base.config.hidden_size)
    models = [_E(base, impl, adapter_dtype=adapter_dtype) for impl in ("fused", "grouped")]
    exact = _E(base.float(), "grouped")
    with torch.no_grad():  # the same PEFT weights, in fp32
        for p, q in zip(perft_layers(exact), perft_layers(models[0])):
            p.experts.A.copy_(q.experts.A)
            p.experts.B.copy_(q.experts.B)
    fused, beside, exact = (_block_step(m, x, g) for m in (*models, exact))
    assert fused_calls
    for what, f, b, e in zip(("output", "x grad", "A grad", "B grad"), fused, beside, exact):
        errors = [(t - e).abs().max().item() for t in (f, b)]
        assert errors[0] <= 2 * errors[1] + 1e-3 * e.abs().max().item(), (what, errors)


def test_switched_off_detached_or_on_another_kernel_the_frozen_experts_are_untouched(fused_calls):
    base = tiny_moe("olmoe")
    inputs = batch()
    with torch.no_grad():
        reference = base(**inputs).logits
    model = _E(base, "fused").eval()
    experts = perft_blocks(model)[0][2].experts
    assert "forward" in experts.__dict__
    with torch.no_grad(), adapters_disabled(model):
        torch.testing.assert_close(model(**inputs).logits, reference, atol=0, rtol=0)
    assert not fused_calls
    with torch.no_grad():
        fused = model(**inputs).logits
    assert fused_calls
    fused_calls.clear()
    model.base_model.model.set_experts_implementation("eager")
    with torch.no_grad():
        eager = model(**inputs).logits  # E beside the eager experts
    assert not fused_calls
    torch.testing.assert_close(eager, fused, atol=1e-5, rtol=1e-4)
    plain = model.unload()
    assert "forward" not in experts.__dict__
    plain.set_experts_implementation("grouped_mm")
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, reference, atol=0, rtol=0)


def test_two_E_adapters_both_join_the_frozen_experts(fused_calls):
    base = tiny_moe("olmoe")
    model = _E(base, "fused", seed=1)
    second = PerftConfig(bottleneck=4, dropout=0.0, impl="fused", **E)
    model.add_adapter("second", PerftPeftConfig.from_knobs(second))
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".second." in name:
                p.normal_(0, 0.2)
    x = torch.randn(2, 5, model.config.hidden_size)
    block = perft_blocks(model)[0][2]
    model.eval()
    with torch.no_grad():
        block.perft.set_adapter(["default", "second"])
        both = block(x)
        assert [len(layers) for _, layers in fused_calls] == [2]
        parts = []
        for name in ("default", "second"):
            block.perft.set_adapter(name)
            parts.append(block(x))
        block.perft._disable_adapters = True
        frozen = block(x)
    torch.testing.assert_close(both, parts[0] + parts[1] - frozen, atol=1e-5, rtol=1e-4)


def test_fused_is_for_E_only():
    with pytest.raises(ValueError, match="impl=fused") as e:
        PerftConfig(variant="R", num_experts=4, top_k=2, impl="fused")
    assert "\n" not in str(e.value)
