"""Expert-scope dropout (the authors': each PEFT expert its own mask, LoRA on its input, adapter after
W_down): the dense and grouped paths against a per-(token, expert) loop oracle given the same masks, and the
masks the layer draws in training (none in evaluation; one shared mask on x with dropout_scope=shared)."""

from __future__ import annotations

import pytest
import torch

from perft_exp.adapters import reference
from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.experts import PeftExperts
from perft_exp.adapters.layer import PerftLayer

T, D, R, N, K, P = 7, 16, 8, 6, 2, 0.3


def _experts(form: str, dtype=torch.float32) -> PeftExperts:
    torch.manual_seed(0)
    experts = PeftExperts(N, D, R, form=form, scaling=2.0, dropout=P, dtype=dtype)
    with torch.no_grad():
        experts.B.normal_(0, 0.1)
    return experts


def _oracle(experts: PeftExperts, x, weights, indices, keep) -> torch.Tensor:
    """One (token, k) pair at a time: y_t = sum_k w_tk * expert_{e_tk}(x_t) with the pair's own mask m_tk."""
    A, B, s = experts.A, experts.B, experts.scaling
    f = experts.act or (lambda t: t)
    y = torch.zeros(T, D, dtype=x.dtype)
    for t in range(T):
        for k in range(indices.shape[1]):
            e, m = int(indices[t, k]), keep[t, k].to(x.dtype) / (1 - P)
            pre = (x[t] * m) @ A[e] if experts.form == "lora" else (x[t] @ A[e]) * m
            y[t] += weights[t, k].to(x.dtype) * (f(pre) @ B[e]) * s
    return y


def _grads(y, inputs, g):
    return torch.autograd.grad(y, inputs, g)


@pytest.mark.parametrize("form", ["lora", "adapter"])
@pytest.mark.parametrize("impl", ["dense", "grouped", "gather", "select", "loop"])
def test_routed_paths_match_the_pair_oracle_under_the_same_masks(form, impl):
    experts = _experts(form).train()
    x = torch.randn(T, D, requires_grad=True)
    indices = torch.stack([torch.randperm(N)[:K] for _ in range(T)])  # a token meets an expert at most once
    weights = torch.softmax(torch.randn(T, K), -1)
    keep = torch.rand(T, K, D if form == "lora" else R) >= P
    fast = experts.forward_routed(x, weights, indices, impl, keep=keep)
    slow = _oracle(experts, x, weights, indices, keep)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(fast)
    for a, b in zip(_grads(fast, [x, experts.A, experts.B], g), _grads(slow, [x, experts.A, experts.B], g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("form", ["lora", "adapter"])
def test_always_on_experts_match_the_loop_under_the_same_masks(form):
    experts = _experts(form).train()
    x = torch.randn(T, D, requires_grad=True)
    keep = torch.rand(T, N, D if form == "lora" else R) >= P
    fast = experts.forward_all(x, keep=keep)
    slow = _oracle(experts, x, torch.ones(T, N), torch.arange(N).expand(T, N), keep)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    f = experts.act or (lambda t: t)
    loop = reference.all_loop(x, experts.A, experts.B, f, experts.scaling, keep, 1 / (1 - P), form)
    torch.testing.assert_close(fast, loop, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(fast)
    for a, b in zip(_grads(fast, [x, experts.A, experts.B], g), _grads(slow, [x, experts.A, experts.B], g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_grouped_matches_dense_under_the_same_masks():
    experts = _experts("lora", torch.bfloat16).train()
    x = torch.randn(T, D, dtype=torch.bfloat16)
    indices = torch.stack([torch.randperm(N)[:K] for _ in range(T)])
    weights = torch.softmax(torch.randn(T, K), -1)
    keep = torch.rand(T, K, D) >= P
    dense = experts.forward_routed(x, weights, indices, "dense", keep=keep).float()
    grouped = experts.forward_routed(x, weights, indices, "grouped", keep=keep).float()
    assert (dense - grouped).abs().max() <= 2e-2 * dense.abs().max()


def _layer(variant: str, scope: str, form: str = "lora") -> PerftLayer:
    spec = {"R": dict(num_experts=N, top_k=K), "D": dict(num_experts=N)}[variant]
    cfg = PerftConfig(variant=variant, bottleneck=R, dropout=P, dropout_scope=scope, form=form, **spec)
    torch.manual_seed(0)
    layer = PerftLayer(cfg, D, base_top_k=2)
    with torch.no_grad():
        layer.experts.B.normal_(0, 0.1)
    return layer


@pytest.mark.parametrize("form", ["lora", "adapter"])
def test_expert_scope_draws_one_mask_per_token_and_expert_in_training_only(form):
    x = torch.randn(T, D)
    width = D if form == "lora" else R
    d = _layer("D", "expert", form).train()
    torch.manual_seed(1)
    y = d(x)
    torch.manual_seed(1)
    torch.testing.assert_close(y, d.experts.forward_all(x, keep=torch.rand(T, N, width) >= P))
    r = _layer("R", "expert", form).train()
    _, weights, indices = r.router(x)
    torch.manual_seed(2)
    y = r(x)
    torch.manual_seed(2)
    keep = torch.rand(T, K, width) >= P
    torch.testing.assert_close(y, r.experts.forward_routed(x, weights, indices, r.impl, keep=keep))
    d.eval()
    torch.testing.assert_close(d(x), d.experts.forward_all(x))  # no dropout in evaluation


def test_shared_scope_is_one_mask_on_x():
    x = torch.randn(T, D)
    layer = _layer("D", "shared").train()
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    torch.testing.assert_close(y, layer.experts.forward_all(torch.nn.functional.dropout(x, P)))


def test_dropout_scope_is_validated():
    with pytest.raises(ValueError, match=r"^perft.dropout_scope='module' is not allowed"):
        PerftConfig(dropout_scope="module")
    assert PerftConfig().dropout_scope == "expert"
