"""R's router as ours (nn.Linear's uniform init, fp32) and as the authors ran it
(N(0, 0.02), the model's dtype)."""

from __future__ import annotations

import math

import pytest
import torch
from moe_models import tiny_moe

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.layer import PerftLayer
from perft_exp.adapters.model import apply_adapters, perft_layers

D, N = 256, 64


def _router(model_dtype=torch.float32, **knobs):
    cfg = PerftConfig(variant="R", num_experts=N, top_k=2, **knobs)
    torch.manual_seed(0)
    return PerftLayer(cfg, D, base_top_k=2, model_dtype=model_dtype).router.weight


def test_default_is_nn_linear_init_in_fp32():
    w = _router(torch.bfloat16)
    assert w.dtype == torch.float32
    assert w.abs().max() <= 1 / math.sqrt(D)
    assert abs(w.std().item() - 1 / math.sqrt(3 * D)) < 0.05 / math.sqrt(3 * D)


def test_authors_router_is_normal_002_in_the_model_dtype():
    w = _router(torch.bfloat16, router_init="authors", router_dtype="model")
    assert w.dtype == torch.bfloat16 and w.shape == (N, D)
    assert abs(w.float().mean().item()) < 1e-3 and abs(w.float().std().item() - 0.02) < 1e-3
    # init and dtype are separate
    assert _router(torch.bfloat16, router_init="authors").dtype == torch.float32


def test_router_dtype_model_follows_the_loaded_model():
    cfg = PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=4, router_dtype="model")
    model = apply_adapters(tiny_moe("olmoe").to(torch.bfloat16), cfg)
    assert {layer.router.weight.dtype for layer in perft_layers(model)} == {torch.bfloat16}
    assert all(layer.router.weight.requires_grad for layer in perft_layers(model))


def test_a_bf16_router_loses_most_small_adamw_updates():
    """Why the dtype matters: AdamW's first step moves every weight by about lr = 1e-5, below half a bf16 ulp
    of a weight of size ~0.02 (bf16 keeps 7 mantissa bits: 2^-6 * 2^-7 / 2 = 6e-5), so in bf16 most weights do
    not move at all (measured: 16 % moved, 100 % in fp32)."""
    moved = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        w = torch.nn.Parameter((torch.randn(N, D) * 0.02).to(dtype))
        before = w.detach().clone()
        w.grad = torch.randn_like(w)
        torch.optim.AdamW([w], lr=1e-5, weight_decay=0.0).step()
        moved[dtype] = (w.detach() != before).float().mean().item()
    assert moved[torch.float32] == 1.0 and moved[torch.bfloat16] < 0.5


@pytest.mark.parametrize(("key", "value"), [("router_init", "xavier"), ("router_dtype", "bfloat16")])
def test_router_knobs_are_validated(key, value):
    with pytest.raises(ValueError, match=rf"^perft.{key}={value!r} is not allowed"):
        PerftConfig(**{key: value})
