"""The embedded default as a user runs it: the real tiny model (built once, cached), PERFT-R, synthetic task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_lifts_accuracy_well_above_the_base_model(tmp_path):
    """`python train.py variant=R perft.num_experts=4`: fine-tuning must add >= 15 points over the base."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    # The default cache (.cache/perft_exp, or $PERFT_CACHE): shared with `make demo`. One process, no launcher.
    for var in ("PERFT_DEBUG", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "variant=R", "perft.num_experts=4", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["variant"] == "R" and results["train"]["steps"] == 300
    assert results["params"]["trainable"] > 0
    lift = results["eval"]["average"] - results["base_eval"]["average"]
    assert lift >= 0.15, (
        f"tuned {results['eval']['average']:.3f} vs base {results['base_eval']['average']:.3f}"
    )
    assert "average" in proc.stdout  # the result table is printed
