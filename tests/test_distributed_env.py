"""The process environment torch.distributed gets: no launcher, torchrun, Slurm tasks."""

from __future__ import annotations

import os

import pytest

from perft_exp.training.distributed import ensure_distributed_env

VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
)


@pytest.fixture
def env(monkeypatch):
    """The variables cleared; the whole environment restored afterwards (ensure_distributed_env writes to
    os.environ directly, which monkeypatch would not undo, and a leaked RANK would make later train.py
    subprocesses initialise torch.distributed)."""
    saved = dict(os.environ)
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


def test_single_process_gets_rank_zero_and_a_port(env):

    ensure_distributed_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0


def test_launcher_variables_are_left_alone(env):

    env.setenv("RANK", "3")
    env.setenv("WORLD_SIZE", "4")
    env.setenv("LOCAL_RANK", "1")
    env.setenv("SLURM_PROCID", "0")  # torchrun inside a Slurm job: torchrun's ranks win
    env.setenv("SLURM_NTASKS", "2")
    ensure_distributed_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")


def test_slurm_tasks_map_to_ranks(env):

    env.setenv("SLURM_PROCID", "5")
    env.setenv("SLURM_NTASKS", "8")
    env.setenv("SLURM_LOCALID", "1")
    env.setenv("MASTER_ADDR", "node001")
    ensure_distributed_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("5", "8", "1")
    assert os.environ["MASTER_ADDR"] == "node001" and os.environ["MASTER_PORT"] == "29500"


def test_slurm_tasks_without_rendezvous_address_fail_clearly(env):
    env.setenv("SLURM_PROCID", "0")
    env.setenv("SLURM_NTASKS", "2")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        ensure_distributed_env()


def test_one_slurm_task_is_a_single_process(env):

    env.setenv("SLURM_PROCID", "0")
    env.setenv("SLURM_NTASKS", "1")
    ensure_distributed_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("0", "1")
