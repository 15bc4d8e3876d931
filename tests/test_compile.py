"""torch.compile with PERFT attached: a training forward and backward, and a decode step over a static KV
cache, have the frozen model's graph breaks and no more (torch._dynamo.explain), the compiled step computes
the eager step's loss and gradients, compiled greedy decoding generates the eager tokens, and
`model.compile=true` trains through train.py."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch._dynamo
from conftest import run_train
from moe_models import tiny_moe
from transformers import StaticCache

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.layer import perft_layers
from perft_exp.adapters.model import apply_adapters, trainable_parameters
from perft_exp.bench import compile_kwargs

CASES = {
    "R": dict(variant="R", num_experts=4, top_k=2),
    "R_top_p_grouped": dict(variant="R", num_experts=16, top_k=4, top_p=0.5, impl="grouped"),
    "E": dict(variant="E", num_experts=None, top_k=None),  # the path auto picks for 16 tokens
    "E_gather": dict(variant="E", num_experts=None, top_k=None, impl="gather"),  # decoding's paths
    "E_select": dict(variant="E", num_experts=None, top_k=None, impl="select"),
    "E_grouped": dict(variant="E", num_experts=None, top_k=None, impl="grouped"),
    "E_fused": dict(variant="E", num_experts=None, top_k=None, impl="fused"),  # inside the frozen experts
    "D": dict(variant="D", num_experts=3),
    "S": dict(variant="S", num_experts=None),
}


def _model(case: str | None) -> torch.nn.Module:
    model = tiny_moe("olmoe")
    if case is not None:
        model = apply_adapters(model, PerftConfig(bottleneck=8, dropout=0.0, **CASES[case]))
    return model.train()


def _step(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, labels=ids, output_router_logits=True)
    out.loss.backward()
    return out.loss


def _graph_breaks(model, ids: torch.Tensor) -> int:
    _step(model, ids)  # eager first: transformers installs its output-capturing hooks on the first call
    torch._dynamo.reset()
    return torch._dynamo.explain(_step)(model, ids).graph_break_count


@pytest.fixture(scope="module")
def base_breaks() -> int:
    ids = torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    return _graph_breaks(_model(None), ids)


@pytest.mark.parametrize("case", sorted(CASES))
def test_perft_adds_no_graph_break(case, base_breaks):
    ids = torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    assert _graph_breaks(_model(case), ids) == base_breaks


def _decode_breaks(model, batch: int) -> int:
    """Graph breaks of one decode step (one new token per sequence over a static KV cache), as compiled
    generation runs it; the prompt's prefill runs eagerly first."""
    model.eval()
    ids = torch.randint(3, 97, (batch, 6), generator=torch.Generator().manual_seed(0))
    cache = StaticCache(config=model.config, max_cache_len=8)
    with torch.no_grad():
        nxt = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        torch._dynamo.reset()
        step = torch._dynamo.explain(model)
        out = step(input_ids=nxt, past_key_values=cache, use_cache=True, cache_position=torch.tensor([6]))
    return out.graph_break_count


@pytest.mark.parametrize(
    "case, batch",
    [
        ("R", 1),
        ("E", 1),  # the select path
        pytest.param("E", 3, marks=pytest.mark.slow),  # dense, at this model's 8 experts
        pytest.param("E_gather", 3, marks=pytest.mark.slow),
        pytest.param("R_top_p_grouped", 1, marks=pytest.mark.slow),
        pytest.param("D", 1, marks=pytest.mark.slow),
        pytest.param("S", 1, marks=pytest.mark.slow),
    ],
)
def test_decode_step_adds_no_graph_break(case, batch):
    assert _decode_breaks(_model(case), batch) == _frozen_decode_breaks(batch)


@functools.cache
def _frozen_decode_breaks(batch: int) -> int:
    return _decode_breaks(_model(None), batch)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["R", "E"])
def test_compiled_generation_matches_eager(case):
    """generate() over a static KV cache with its decode steps compiled (the bench's compiled generation,
    `compile_kwargs`) gives the eager greedy tokens, with B drawn large enough to move them off the frozen
    model's."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = _model(case).eval()
    with torch.no_grad():
        for layer in perft_layers(model):
            layer.experts.B.normal_(0, 0.5)
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        lm = model.get_base_model()  # generate() keeps its compiled decode step here
        with model.disable_adapter():
            base = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        compiled = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs, **compile_kwargs("cpu"))
    assert lm._compiled_call is not None  # generate() did compile its decode step
    assert not torch.equal(eager, base)
    assert torch.equal(compiled, eager)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["R", "E_grouped", "E_fused", "D"])
def test_compiled_step_matches_eager(case):
    """Inductor compiles forward and backward (E's grouped matmuls through their opaque op); the loss and
    the adapters' gradients are the eager step's."""
    torch._dynamo.reset()
    ids = torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    model = _model(case)
    params = trainable_parameters(model)
    loss = _step(model, ids)
    eager = {name: p.grad.clone() for name, p in params.items()}
    model.zero_grad(set_to_none=True)
    compiled_loss = _step(torch.compile(model), ids)
    torch.testing.assert_close(compiled_loss, loss, atol=1e-5, rtol=1e-5)
    for name, p in params.items():
        torch.testing.assert_close(p.grad, eager[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_model_compile_trains_through_train_py(micro_model_dir, app_env, tmp_path):
    r = run_train(
        [
            "trainer=debug",
            "trainer.max_steps=2",
            "logger=none",
            "eval.enabled=false",
            "model.compile=true",
            f"model.pretrained={micro_model_dir}",
            "task.max_train_examples=16",
            f"hydra.run.dir={tmp_path}",
        ],
        app_env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train"]["steps"] == 2 and "model.compile=true" in results["config_changes"]
