"""Live routing statistics (perft_exp/adapters/routing_stats.py): principal angles against known geometry,
track_routing's load accounting, and the Trainer callback that logs them for every evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from moe_models import batch, perft_model

from perft_exp.adapters.routing_stats import principal_angles, track_routing
from perft_exp.metric_schema import load_share_key, routing_key


def test_principal_angles_identical_and_rotated_spaces_are_zero():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 32, generator=g)
    assert principal_angles(w, w).max() < 1e-4
    mixed = torch.randn(4, 4, generator=g) @ w  # same row space, other basis
    assert principal_angles(mixed, w).max() < 1e-4
    wider = torch.cat([w, torch.randn(3, 32, generator=g)])  # a superspace
    angles = principal_angles(w, wider)
    assert angles.shape == (4,) and angles.max() < 1e-4


def test_principal_angles_orthogonal_and_known_angle():
    eye = torch.eye(6)
    assert torch.allclose(principal_angles(eye[:2], eye[2:5]), torch.full((2,), 90.0, dtype=torch.float64))
    theta = math.radians(30.0)
    a = torch.tensor([[1.0, 0.0, 0.0]])
    b = torch.tensor([[math.cos(theta), math.sin(theta), 0.0]])
    assert principal_angles(a, b).item() == pytest.approx(30.0, abs=1e-6)
    # ascending, and the shared direction comes first
    angles = principal_angles(eye[:2], torch.stack([eye[0], eye[3]]))
    assert angles.tolist() == pytest.approx([0.0, 90.0], abs=1e-6)


@pytest.mark.parametrize("variant, top_k", [("R", 2), ("E", 2)])
def test_track_routing_loads_sum_to_tokens_times_k(variant, top_k):
    model = perft_model(variant)
    inputs = batch()  # (3, 7), two padding positions in row 0
    tokens = int(inputs["attention_mask"].sum())
    hooks = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()}
    with torch.no_grad():
        reference = model(**inputs).logits
        with track_routing(model) as stats:
            model(**inputs)
            model(**inputs)
    rows = stats.per_layer()
    assert len(rows) == model.config.num_hidden_layers
    for row in rows:
        assert row["tokens"] == 2 * tokens
        assert sum(row["load"]) == 2 * tokens * top_k
        assert 0.0 <= row["load_entropy"] <= 1.0 + 1e-9
        if variant == "R":
            assert len(row["load"]) == 4
            assert 0.0 < row["router_entropy"] <= math.log(4) + 1e-6
        else:
            assert len(row["load"]) == model.config.num_experts and row["router_entropy"] is None
    assert stats.padding_masked
    flat = stats.metrics()
    assert flat[routing_key("mean", "load_entropy")] == pytest.approx(
        sum(row["load_entropy"] for row in rows) / len(rows)
    )
    for row in rows:  # each layer's load shares, as logged, are its load over its assignments
        shares = [flat[load_share_key(row["layer"], j)] for j in range(len(row["load"]))]
        assert shares == pytest.approx([c / sum(row["load"]) for c in row["load"]])
    # side-effect free: hooks gone, outputs unchanged
    assert hooks == {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()
    }
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference)


def test_track_routing_without_mask_counts_every_position():
    model = perft_model("R")
    ids = batch()["input_ids"]
    with torch.no_grad(), track_routing(model) as stats:
        model(input_ids=ids)
    assert not stats.padding_masked
    assert all(sum(row["load"]) == ids.numel() * 2 for row in stats.per_layer())


def test_track_routing_skips_unrouted_variants():
    with track_routing(perft_model("D")) as stats:
        pass
    assert stats.per_layer() == []


def test_the_routing_callback_counts_each_evaluation_alone_and_no_training_step():
    """RoutingStatsCallback (what PerftTrainer adds): hooks from train begin to train end, counting eval-mode
    forwards only, each evaluation from zero; its metrics are logged and added to the evaluation's."""
    from perft_exp import metric_schema as schema
    from perft_exp.adapters.routing_stats import RoutingStatsCallback

    model = perft_model("R")
    inputs = batch()
    tokens = int(inputs["attention_mask"].sum())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    logged: list[dict] = []
    callback = RoutingStatsCallback(logged.append)
    callback.on_train_begin(None, None, None, model=model)
    prefix = schema.trainer_name(schema.ROUTING)
    for evaluation in range(2):
        with torch.no_grad():
            model.train()
            model(**inputs)  # a training step: not counted
            model.eval()
            for _ in range(evaluation + 1):
                model(**inputs)
        metrics = {"eval_loss": 1.0}
        callback.on_evaluate(None, None, None, metrics=metrics)
        shares = {
            k: v
            for k, v in logged[-1].items()
            if k.startswith(load_share_key(0, 0, prefix).rsplit("/", 1)[0])
        }
        assert len(shares) == 4 and sum(shares.values()) == pytest.approx(1.0)
        assert metrics["eval_loss"] == 1.0 and set(logged[-1]) <= set(metrics)
    with torch.no_grad(), track_routing(model) as stats:
        model(**inputs)
    assert stats.per_layer()[0]["tokens"] == tokens
    callback.on_train_end(None, None, None)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert len(logged) == 2 and routing_key("mean", "load_entropy", prefix) in logged[0]
