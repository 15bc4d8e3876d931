"""PERFT adapters on tiny random models of every architecture: the batched paths against a Python-loop
oracle, freezing, routing, the aux loss, init, save/load, and argument errors."""

from __future__ import annotations

import pytest
import torch
from moe_models import ARCHS, batch, tiny_moe

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.io import AdapterError, load_adapter, save_adapter
from perft_exp.adapters.model import adapter_aux_loss, adapters_disabled, apply_adapters, perft_layers
from perft_exp.adapters.routing_stats import perft_blocks
from perft_exp.adapters.tuner import PerftPeftConfig
from perft_exp.models.arch import get_architecture

VARIANTS = {
    "R": dict(variant="R", num_experts=4, top_k=2),
    "R_many": dict(variant="R", num_experts=32, top_k=2),  # large N: the grouped path
    "R_top_p": dict(variant="R", num_experts=8, top_k=4, top_p=0.4),  # top-p routing: masked slots
    "E": dict(variant="E", num_experts=None, top_k=None),
    "D": dict(variant="D", num_experts=3),
    "S": dict(variant="S", num_experts=None),
}


def first_block(model):
    """(the first MoE block carrying PERFT, its active PerftLayer)."""
    _, _, block, layer = perft_blocks(model)[0]
    return block, layer


def base_block(block, x: torch.Tensor) -> torch.Tensor:
    """The frozen block's own output (its PERFT module switched off for one call)."""
    block.perft._disable_adapters = True
    try:
        return block(x)
    finally:
        block.perft._disable_adapters = False


def oracle(block, x: torch.Tensor, config) -> torch.Tensor:
    """PERFT by the book, one expert at a time: routing recomputed from the raw weights."""
    layer = first_active(block)
    T, D = x.reshape(-1, x.shape[-1]).shape
    h = x.reshape(T, D).to(layer.experts.A.dtype)
    A, B, s = layer.experts.A, layer.experts.B, layer.experts.scaling
    f = layer.experts.act or (lambda t: t)
    if layer.variant in ("D", "S"):
        weights = torch.ones(T, A.shape[0])
        chosen = torch.arange(A.shape[0]).expand(T, -1)
    elif layer.variant == "R":
        probs = torch.softmax(x.reshape(T, D).float() @ layer.router.weight.float().T, dim=-1)
        top, chosen = torch.topk(probs, layer.top_k, dim=-1)
        top_p = getattr(layer.routing, "top_p", None)
        for t in range(T) if top_p is not None else ():  # the fewest of the top-K whose mass reaches p
            taken, mass = 0, 0.0
            while taken < layer.top_k and mass < top_p:
                mass, taken = mass + top[t, taken].item(), taken + 1
            top[t, taken:] = 0.0
        weights = top / top.sum(-1, keepdim=True)
    else:  # E: the frozen router, recomputed
        router = get_architecture(config.model_type).router(block)
        probs = torch.softmax(x.reshape(T, D).float() @ router.weight.float().T, dim=-1)
        weights, chosen = torch.topk(probs, layer.top_k, dim=-1)
        if getattr(config, "norm_topk_prob", True):
            weights = weights / weights.sum(-1, keepdim=True)
    y = torch.zeros(T, D, dtype=h.dtype)
    for t in range(T):
        for k in range(chosen.shape[1]):
            e = int(chosen[t, k])
            y[t] += weights[t, k].to(h.dtype) * (f(h[t] @ A[e]) @ B[e]) * s
    return base_block(block, x) + y.reshape(x.shape).to(x.dtype)


def first_active(block):
    return next(iter(block.perft.perft_layer.values()))


def _perft_model(arch: str, variant: str, dtype: str = "float32", impl: str = "auto", **kw):
    model = tiny_moe(arch)
    spec = {"bottleneck": 8, **VARIANTS[variant], **kw}
    cfg = PerftConfig(dropout=0.0, init="zero_b", impl=impl, adapter_dtype=dtype, **spec)
    model = apply_adapters(model, cfg)
    with torch.no_grad():  # non-trivial B so the PEFT path contributes
        for layer in perft_layers(model):
            layer.experts.B.normal_(0, 0.1)
    return model


ROUTED_IMPLS = [
    (v, i)
    for v in sorted(VARIANTS)
    for i in ("auto", "dense", "grouped", "fused", "gather", "select")
    if (v[0] in "RE" or i == "auto") and (i != "fused" or v == "E")
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant, impl", ROUTED_IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fast_path_matches_loop_oracle(arch, variant, impl, dtype):
    model = _perft_model(arch, variant, dtype, impl)
    block, layer = first_block(model)
    x = torch.randn(2, 5, model.config.hidden_size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)

    fast = block(x)
    slow = oracle(block, x2, model.config)
    _close(fast, slow, dtype)

    g = torch.randn_like(fast)
    params = [p for p in layer.parameters()]
    grads_fast = torch.autograd.grad(fast, [x, *params], g)
    grads_slow = torch.autograd.grad(slow, [x2, *params], g, allow_unused=True)
    for gf, gs in zip(grads_fast, grads_slow):
        _close(gf, gs, dtype)


@pytest.mark.parametrize("impl", ["dense", "grouped", "loop"])
def test_top_p_takes_a_variable_number_of_experts_and_matches_the_loop_oracle(impl):
    """A sharper router (W_r doubled) makes some tokens reach p with one expert and others need several."""
    torch.manual_seed(0)
    model = _perft_model("olmoe", "R_top_p", impl=impl)
    block, layer = first_block(model)
    with torch.no_grad():
        layer.router.weight.mul_(2.0)
    x = torch.randn(4, 8, model.config.hidden_size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    fast = block(x)
    used = layer.routing_taken.sum(-1)  # (T,) experts per token
    assert used.min() >= 1 and used.max() <= layer.top_k and len(used.unique()) > 1, used
    slow = oracle(block, x2, model.config)
    _close(fast, slow, "float32")
    g = torch.randn_like(fast)
    params = list(layer.parameters())
    grads_fast = torch.autograd.grad(fast, [x, *params], g)
    grads_slow = torch.autograd.grad(slow, [x2, *params], g, allow_unused=True)
    for gf, gs in zip(grads_fast, grads_slow):
        _close(gf, gs, "float32")


def _close(a: torch.Tensor, b: torch.Tensor, dtype: str) -> None:
    if dtype == "float32":
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    else:  # bf16 keeps ~3 significant digits: bound the error by the tensor's own scale
        err, scale = (a.float() - b.float()).abs().max(), b.float().abs().max()
        assert err <= 2e-2 * scale + 1e-4, f"max error {err} vs scale {scale}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["R", "E", "D", "S"])
def test_zero_b_leaves_logits_unchanged(arch, variant):
    inputs = batch()
    base = tiny_moe(arch)
    with torch.no_grad():
        ref = base(**inputs).logits
    model = apply_adapters(tiny_moe(arch), PerftConfig(bottleneck=4, init="zero_b", **VARIANTS[variant]))
    with torch.no_grad():
        out = model(**inputs).logits
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["R", "E", "D", "S", "qv_lora", "router_lora", "expert_lora"])
def test_only_adapter_parameters_train(arch, variant):
    spec = VARIANTS.get(variant, {"variant": variant, "num_experts": None, "top_k": None})
    model = apply_adapters(tiny_moe(arch), PerftConfig(bottleneck=4, **spec))
    model.train()
    out = model(**batch(), labels=batch()["input_ids"], output_router_logits=True)
    loss = out.loss + (adapter_aux_loss(model) or 0.0)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    for n, p in model.named_parameters():
        is_adapter = ".perft." in n or "lora_" in n
        assert p.requires_grad == is_adapter, n
        if is_adapter:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None, n


@pytest.mark.parametrize("arch", ARCHS)
def test_base_router_logits_still_collected(arch):
    model = apply_adapters(tiny_moe(arch), PerftConfig(bottleneck=4, **VARIANTS["E"]))
    out = model(**batch(), labels=batch()["input_ids"], output_router_logits=True)
    assert out.router_logits is not None and len(out.router_logits) == model.config.num_hidden_layers
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("arch", ARCHS)
def test_E_is_routed_by_the_base_routers_choices(arch):
    model = _perft_model(arch, "E")
    arch_facts = get_architecture(model.config.model_type)
    seen = {}
    blocks = {name: (block, layer) for _, name, block, layer in perft_blocks(model)}
    for name, (block, _) in blocks.items():
        arch_facts.router(block).register_forward_hook(
            lambda mod, args, out, name=name: seen.__setitem__(name, out[2].clone())
        )
    with torch.no_grad():
        model(**batch())
    assert seen.keys() == blocks.keys() and len(seen) == model.config.num_hidden_layers
    for name, (_, layer) in blocks.items():
        assert torch.equal(layer.routing_indices, seen[name])


@pytest.mark.parametrize("arch", ARCHS)
def test_R_router_learns_from_task_loss_and_aux_loss(arch):
    model = _perft_model(arch, "R")
    routers = [layer.router.weight for layer in perft_layers(model)]
    inputs = batch()
    out = model(**inputs, labels=inputs["input_ids"])
    g_task = torch.autograd.grad(out.loss, routers)
    assert all(g.abs().sum() > 0 for g in g_task), "no task-loss gradient reaches W_r"
    model(**inputs)
    aux = adapter_aux_loss(model, inputs["attention_mask"])
    g_aux = torch.autograd.grad(aux, routers)
    assert all(g.abs().sum() > 0 for g in g_aux), "no aux-loss gradient reaches W_r"


def test_authors_defect_cuts_the_routers_task_gradient():
    model = _perft_model("olmoe", "R", authors_weighting_defect=True)
    routers = [layer.router.weight for layer in perft_layers(model)]
    out = model(**batch(), labels=batch()["input_ids"])
    grads = torch.autograd.grad(out.loss, routers, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_aux_loss_masks_padding():
    model = _perft_model("olmoe", "R")
    inputs = batch()
    model(**inputs)
    masked = adapter_aux_loss(model, inputs["attention_mask"])
    model(**inputs)
    unmasked = adapter_aux_loss(model, None)
    assert not torch.allclose(masked, unmasked)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["R", "E", "D", "S", "qv_lora", "router_expert_lora"])
def test_save_load_reproduces_logits(tmp_path, arch, variant):
    spec = VARIANTS.get(variant, {"variant": variant, "num_experts": None, "top_k": None})
    model = apply_adapters(tiny_moe(arch), PerftConfig(bottleneck=4, dropout=0.0, **spec))
    with torch.no_grad():
        for _n, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    model.eval()
    with torch.no_grad():
        ref = model(**batch()).logits
    save_adapter(model, tmp_path, base_model="tiny")
    loaded = load_adapter(tiny_moe(arch), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch()).logits, ref, atol=0, rtol=0)


def test_load_refuses_other_base_model_or_variant(tmp_path):
    model = apply_adapters(tiny_moe("olmoe"), PerftConfig(bottleneck=4, **VARIANTS["R"]))
    save_adapter(model, tmp_path, base_model="tiny")
    with pytest.raises(AdapterError, match="model_type"):
        load_adapter(tiny_moe("mixtral"), tmp_path)
    with pytest.raises(AdapterError, match="hidden_size"):
        load_adapter(tiny_moe("olmoe", hidden_size=64, num_attention_heads=4), tmp_path)
    with pytest.raises(AdapterError, match="variant"):
        load_adapter(tiny_moe("olmoe"), tmp_path, PerftConfig(variant="D", num_experts=4, bottleneck=4))


def test_corrupted_adapter_file_is_reported(tmp_path):
    model = apply_adapters(tiny_moe("olmoe"), PerftConfig(bottleneck=4, **VARIANTS["S"]))
    save_adapter(model, tmp_path, base_model="tiny")
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(AdapterError, match="truncated or corrupted"):
        load_adapter(tiny_moe("olmoe"), tmp_path)


def test_adapters_disabled_gives_the_base_model():
    inputs = batch()
    with torch.no_grad():
        ref = tiny_moe("olmoe")(**inputs).logits
        model = _perft_model("olmoe", "R")
        assert not torch.allclose(model(**inputs).logits, ref)
        with adapters_disabled(model):
            torch.testing.assert_close(model(**inputs).logits, ref, atol=0, rtol=0)


def test_adapter_form_runs():
    model = _perft_model("olmoe", "R", form="adapter")
    block, _ = first_block(model)
    x = torch.randn(1, 4, 32)
    torch.testing.assert_close(block(x), oracle(block, x, model.config), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="R", num_experts=4, top_k=5), "top_k=5 > perft.num_experts=4"),
        (dict(variant="R", num_experts=4, top_k=0), "top_k=0"),
        (dict(variant="S", bottleneck=0), "bottleneck=0"),
        (dict(variant="E", num_experts=8, top_k=None), "variant E takes its expert count"),
        (dict(variant="X"), "perft.variant='X'"),
        (dict(variant="D", num_experts=0), "num_experts=0"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        PerftConfig(**kwargs)


def test_E_on_a_model_without_moe_blocks():
    model = tiny_moe("qwen2_moe", mlp_only_layers=(0, 1))
    with pytest.raises(ValueError, match="has none"):
        apply_adapters(model, PerftConfig(bottleneck=4, **VARIANTS["E"]))


def test_unknown_architecture():
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = transformers.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="llama: no MoE block found"):
        apply_adapters(model, PerftConfig(bottleneck=4, **VARIANTS["E"]))


def test_grouped_falls_back_when_kernel_cannot_take_the_shape():
    # bf16 with r=4 rows are 8 bytes: not 16-byte aligned, so the grouped request must still be right.
    model = _perft_model("olmoe", "R_many", "bfloat16", "grouped", bottleneck=4)
    block, _ = first_block(model)
    x = torch.randn(1, 4, 32)
    _close(block(x), oracle(block, x, model.config), "bfloat16")


def test_auto_picks_each_path_by_the_pairs_and_the_device():
    """E's shape on OLMoE (64 experts, top-8, r16): select for a decode step at batch 1, the row sums for a
    few dozen tokens on CPU but dense on a GPU (where the row sums cost what the frozen experts do), grouped
    beyond; R with 4 experts is dense past select whatever the device."""
    from perft_exp.adapters.experts import PeftExperts

    e, r = PeftExperts(64, 32, 16, device="meta"), PeftExperts(4, 32, 16, device="meta")
    assert [e.choose_impl(8, t) for t in (1, 16, 64, 65)] == ["select", "gather", "gather", "grouped"]
    assert [e.choose_impl(8, t, "cuda") for t in (1, 16, 64, 65)] == ["select", "dense", "dense", "grouped"]
    assert [r.choose_impl(2, t, d) for t in (8, 16, 1024) for d in ("cpu", "cuda")] == ["select"] * 2 + [
        "dense"
    ] * 4


@pytest.mark.parametrize("variant", ["R", "R_many", "R_top_p", "E"])
def test_decoding_with_the_kv_cache_gives_the_loop_oracles_tokens(variant):
    """Greedy generation at batch 1 (the select path) and 3 (dense, row sums) equals the per-expert loop's
    tokens, with B large enough that PERFT changes the frozen model's tokens."""
    inputs = batch()
    frozen = tiny_moe("olmoe").eval()
    model = _perft_model("olmoe", variant).eval()
    with torch.no_grad():
        for layer in perft_layers(model):
            layer.experts.B.normal_(0, 2.0)

    def generate(m, impl=None, **kw):
        for layer in perft_layers(m):
            layer.impl = impl
        with torch.no_grad():
            return m.generate(**kw, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)

    for rows in (slice(1, 2), slice(0, 3)):
        kw = {k: v[rows] for k, v in inputs.items()}
        fast, slow = generate(model, "auto", **kw), generate(model, "loop", **kw)
        assert torch.equal(fast, slow), (fast, slow)
        assert not torch.equal(fast, generate(frozen, **kw))


def test_only_adapters_that_route_by_the_frozen_router_hook_it():
    """R, D, S never read the frozen router's output: its forward hook goes on with E's adapter only."""
    model = _perft_model("olmoe", "R")
    block, _ = first_block(model)
    router = get_architecture(model.config.model_type).router(block)
    assert not router._forward_hooks
    model.add_adapter("e", PerftPeftConfig.from_knobs(PerftConfig(bottleneck=4, **VARIANTS["E"])))
    assert len(router._forward_hooks) == 1
    model.add_adapter("e2", PerftPeftConfig.from_knobs(PerftConfig(bottleneck=4, **VARIANTS["E"])))
    assert len(router._forward_hooks) == 1
    model.set_adapter("e")
    with torch.no_grad():
        model(**batch())
    assert block.perft._router_output is None  # read and dropped by the block's hook


def test_two_active_adapters_each_add_their_sum_to_the_block():
    model = _perft_model("olmoe", "R")
    model.add_adapter(
        "d", PerftPeftConfig.from_knobs(PerftConfig(bottleneck=4, dropout=0.0, **VARIANTS["D"]))
    )
    block, _ = first_block(model)
    for layer in block.perft.perft_layer.values():
        with torch.no_grad():
            layer.experts.B.normal_(0, 0.1)
    x = torch.randn(2, 5, model.config.hidden_size)
    block.perft.set_adapter(["default", "d"])
    with torch.no_grad():
        both = block(x)
        parts = [layer(x.reshape(10, -1)) for layer in block.perft.perft_layer.values()]
        ref = base_block(block, x)
    torch.testing.assert_close(both, ref + (parts[0] + parts[1]).view_as(ref), atol=1e-5, rtol=1e-5)
