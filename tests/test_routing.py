"""Routing kinds (perft_exp/adapters/routing.py): which kind a config runs, top-p against hand-computed
numbers, and top-p through the config, counting and the routing statistics."""

from __future__ import annotations

import math

import pytest
import torch
from moe_models import batch, perft_model

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.counting import count_parameters
from perft_exp.adapters.model import perft_layers
from perft_exp.adapters.router import PeftRouter
from perft_exp.adapters.routing import AllOn, Base, TopK, TopP, routing_kind, routing_kind_class
from perft_exp.adapters.routing_stats import track_routing
from perft_exp.config import ConfigError, compose, perft_config, run_name
from perft_exp.metric_schema import routing_key


@pytest.mark.parametrize(
    "perft, kind",
    [
        (dict(variant="R"), TopK),
        (dict(variant="R", top_p=0.5), TopP),
        (dict(variant="R", authors_weighting_defect=True), TopK),
        (dict(variant="E", num_experts=None, top_k=None), Base),
        (dict(variant="D", num_experts=3), AllOn),
        (dict(variant="S", num_experts=None), AllOn),
    ],
)
def test_each_variant_runs_its_routing_kind(perft, kind):
    assert routing_kind_class(PerftConfig(**perft).to_dict()) is kind


def test_top_p_takes_the_fewest_of_the_top_k_whose_mass_reaches_p():
    """Token t's router probabilities are column t of the router (x_t = e_t):
    1, 2 and the cap K = 3 experts."""
    probs = torch.tensor(
        [
            [0.70, 0.40, 0.25],
            [0.20, 0.30, 0.25],
            [0.06, 0.20, 0.25],
            [0.04, 0.10, 0.25],
        ]
    )
    router = PeftRouter(hidden_size=3, num_experts=4, top_k=3)  # probs: (N, T)
    with torch.no_grad():
        router.weight.copy_(probs.log())
    kind = routing_kind(dict(variant="R", top_p=0.6), num_experts=4, top_k=3)
    routed = kind.route(torch.eye(3), router, None)
    assert routed.taken.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert routed.experts_per_token().tolist() == [1, 2, 3]
    assert routed.indices[0, 0] == 0 and routed.indices[1, :2].tolist() == [0, 1]
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.4 / 0.7, 0.3 / 0.7, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(routed.weights, expected)
    torch.testing.assert_close(routed.logits, probs.log().T)


def test_top_p_of_one_is_top_k():
    router = PeftRouter(hidden_size=16, num_experts=8, top_k=2)
    x = torch.randn(10, 16)
    top_k = routing_kind(dict(variant="R"), 8, 2).route(x, router, None)
    top_p = routing_kind(dict(variant="R", top_p=1.0), 8, 2).route(x, router, None)
    assert torch.equal(top_p.indices, top_k.indices) and bool(top_p.taken.all())
    torch.testing.assert_close(top_p.weights, top_k.weights)


def test_top_p_counts_its_bound_and_the_statistics_measure_experts_per_token():
    """Counting takes at most K of N (the parameters a token may use);
    the statistics measure what tokens used."""
    plain, top_p = perft_model("R", top_k=3), perft_model("R", top_k=3, top_p=0.5)
    assert count_parameters(top_p) == count_parameters(plain)
    assert next(perft_layers(top_p)).activated_fraction() == 3 / 4
    inputs = batch()
    tokens = int(inputs["attention_mask"].sum())
    for model in (plain, top_p):
        with torch.no_grad():
            for layer in perft_layers(model):
                layer.router.weight.mul_(20.0)  # a sharp router: some tokens reach p with fewer than K
            with track_routing(model) as stats:
                model(**inputs)
        rows, summary = stats.per_layer(), stats.summary()
        for row in rows:
            assert row["tokens"] == tokens
            assert row["experts_per_token"] == sum(row["load"]) / tokens
            assert row["activated_fraction"] == row["experts_per_token"] / 4
        mean = sum(r["experts_per_token"] for r in rows) / len(rows)
        assert summary["experts_per_token"] == pytest.approx(mean) and summary["layers"] == rows
        assert stats.metrics()[routing_key("mean", "experts_per_token")] == pytest.approx(mean)
        if model is plain:
            assert all(row["experts_per_token"] == 3 for row in rows)
        else:
            assert 1 <= summary["experts_per_token"] < 3
    assert not math.isnan(summary["activated_fraction"])


def test_top_p_is_a_hydra_knob_in_the_run_name_and_label():
    cfg = compose(["perft.top_p=0.5"])
    perft = perft_config(cfg)
    assert perft.top_p == 0.5  # the tiny model sets the adapter form, which the label shows too
    assert perft.run_label() == "R (Top2/4) [top-p=0.5, adapter] r16"
    assert "-p0.5" in run_name(cfg.perft, cfg.seed) and "-p0.5" not in run_name(compose().perft, cfg.seed)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["variant=E", "perft.top_p=0.5"], "perft.top_p applies to variant R only"),
        (["perft.top_p=0"], "perft.top_p=0"),
        (["perft.top_p=1.5"], "must be in (0, 1]"),
        (["perft.top_p=0.5", "perft.authors_weighting_defect=true"], "do not combine"),
    ],
)
def test_bad_top_p_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        perft_config(compose(overrides))
