"""The optimizer step's batch: a global batch split over the ranks (trainer=olmoe|mixtral: 16, as the authors
ran it), the same optimizer steps on 1 or 2 processes (torchrun on CPU),
and one-line errors for splits that fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, run_train

from perft_exp.config import ConfigError, compose, compose_spec, validate
from perft_exp.training.batch import BatchPlan, batch_plan


@pytest.mark.parametrize("trainer", ["olmoe", "mixtral"])
def test_the_paper_trainers_keep_a_global_batch_of_16_on_any_number_of_ranks(trainer):
    tr = compose_spec([f"trainer={trainer}"]).trainer
    assert tr.global_batch_size == 16
    assert [batch_plan(tr, n) for n in (1, 2, 8)] == [
        BatchPlan(16, 16, 1, 1),
        BatchPlan(16, 8, 1, 2),
        BatchPlan(16, 2, 1, 8),
    ]
    tr.per_device_train_batch_size = 2  # a smaller micro batch accumulates up to the same global batch
    assert [batch_plan(tr, n).accumulation for n in (1, 2, 8)] == [8, 4, 1]


def test_without_a_global_batch_it_grows_with_the_ranks():
    tr = compose_spec(["trainer=tiny"]).trainer
    assert tr.global_batch_size is None
    assert batch_plan(tr, 2) == BatchPlan(32, 16, 1, 2)


@pytest.mark.parametrize(
    ("overrides", "world", "key"),
    [
        (["trainer=olmoe"], "3", "trainer.global_batch_size=16 cannot be split over 3 ranks"),
        (
            ["trainer=olmoe", "trainer.per_device_train_batch_size=4"],
            "8",
            "trainer.per_device_train_batch_size=4",
        ),
        (
            ["trainer=olmoe", "trainer.gradient_accumulation_steps=2"],
            "1",
            "trainer.gradient_accumulation_steps=2",
        ),
        (
            ["trainer=tiny", "trainer.per_device_train_batch_size=0"],
            "1",
            "trainer.per_device_train_batch_size=0",
        ),
    ],
)
def test_a_batch_the_ranks_cannot_split_is_a_one_line_config_error(monkeypatch, overrides, world, key):
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ConfigError, match=f"^{key}") as err:
        validate(compose(overrides))
    assert "\n" not in str(err.value)


def _args(model_dir, run_dir) -> list[str]:
    return [
        "trainer=debug",
        "trainer.max_steps=-1",
        "trainer.num_train_epochs=1",
        "trainer.global_batch_size=8",
        "trainer.per_device_train_batch_size=2",
        "logger=none",
        "eval.enabled=false",
        f"model.pretrained={model_dir}",
        "task.max_train_examples=64",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_two_ranks_take_the_same_optimizer_steps_as_one_process(micro_model_dir, app_env, tmp_path):
    one = run_train(_args(micro_model_dir, tmp_path / "one"), app_env)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(REPO / "train.py"),
        *_args(micro_model_dir, tmp_path / "two"),
    ]
    two = subprocess.run(cmd, cwd=REPO, env=app_env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    results = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two")}
    assert results["one"]["batch"] == {
        "global_batch": 8,
        "micro_batch": 2,
        "accumulation": 4,
        "world_size": 1,
    }
    assert results["two"]["batch"] == {
        "global_batch": 8,
        "micro_batch": 2,
        "accumulation": 2,
        "world_size": 2,
    }
    assert results["one"]["train"]["steps"] == results["two"]["train"]["steps"] == 64 // 8
