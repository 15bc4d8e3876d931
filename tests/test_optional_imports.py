"""Quiet start: a run imports bitsandbytes and DeepSpeed only when its config uses them, and wandb only when
it logs (perft_exp/optional_imports.py), so `python train.py` prints no warning a user cannot act on."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, run_train
from test_sweeps import shrink

from perft_exp.config import compose_spec, setup
from perft_exp.optional_imports import unused

OPTIONAL = ("bitsandbytes", "deepspeed", "wandb")

# What train.py does before training (compose, validate, hide the unused packages), then the imports and
# the accelerate call through which transformers' Trainer reaches bitsandbytes and DeepSpeed.
_START = f"""
import sys
from perft_exp.cli import precheck
from perft_exp.config import setup
from perft_exp.optional_imports import hide_unused
setup()
hide_unused(precheck(sys.argv[1:]))
import torch
import perft_exp.training.run, perft_exp.training.trainer, perft_exp.training.tracking
from accelerate.utils import extract_model_from_parallel
extract_model_from_parallel(torch.nn.Linear(2, 2))
print(sorted(m for m in {OPTIONAL!r} if sys.modules.get(m) is not None))
"""


def _loaded_after_start(*overrides: str) -> str:
    r = subprocess.run(
        [sys.executable, "-c", _START, *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def test_the_default_run_imports_no_optional_package_before_it_logs():
    assert _loaded_after_start() == "[]"


def test_a_run_that_uses_them_keeps_them():
    loaded = _loaded_after_start("model.quantization=4bit", "deepspeed=zero2")
    assert loaded == "['bitsandbytes', 'deepspeed']"


def test_only_a_package_no_job_uses_is_hidden():
    setup()
    default = compose_spec([])
    assert unused([default]) == ["bitsandbytes", "deepspeed"]
    # a multirun in which one job quantises
    assert unused([default, compose_spec(["model.quantization=4bit"])]) == ["deepspeed"]
    assert unused([compose_spec(["deepspeed=zero2"])]) == ["bitsandbytes"]


@pytest.mark.slow
def test_train_prints_no_warning_from_packages_it_does_not_use(micro_model_dir, app_env, tmp_path):
    r = run_train([*shrink(micro_model_dir), f"output_root={tmp_path}"], app_env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "kernels" not in out and "bitsandbytes" not in out  # bitsandbytes: `pip install kernels`
    assert "real_accelerator" not in out  # DeepSpeed: "Setting accelerator to CPU"
