"""Routing analysis of finished runs (perft_exp/analysis/routing.py): R's router angles, the vector picture
and the figures."""

from __future__ import annotations

import torch
from moe_models import batch, perft_model

from perft_exp.adapters.routing_stats import perft_blocks, router_angles, track_routing
from perft_exp.analysis.routing import plot_loads, plot_vectors, vector_picture


def test_router_angles_and_figures(tmp_path):
    model = perft_model("R")
    rows = router_angles(model)
    assert len(rows) == model.config.num_hidden_layers
    for row in rows:
        assert len(row["angles_deg"]) == 4 and 0.0 <= row["min_deg"] <= row["max_deg"] <= 90.0
    # a router initialised inside the frozen router's row space has angle 0 to it
    _, _, block, layer = perft_blocks(model)[0]
    with torch.no_grad():
        layer.router.weight.copy_(torch.randn(4, 8) @ block.gate.weight)
    assert router_angles(model)[0]["max_deg"] < 1e-3

    picture = vector_picture(model)
    assert picture[0]["peft_keys"].shape == (4 * 4, 2) and picture[0]["peft_router"].shape == (4, 2)
    with torch.no_grad(), track_routing(model) as stats:
        model(**batch())
    plot_loads(stats.per_layer(), tmp_path / "load.png")
    plot_vectors(picture, tmp_path / "vectors.png")
    assert (tmp_path / "load.png").stat().st_size > 0 and (tmp_path / "vectors.png").stat().st_size > 0
