"""Small CLIs fail in one line with a non-zero exit code where they cannot do their work (issue 14)."""

from __future__ import annotations

import runpy
import subprocess

import pytest
import torch

from perft_exp.config import REPO_ROOT, compose


def _script(name: str) -> dict:
    return runpy.run_path(str(REPO_ROOT / "scripts" / f"{name}.py"))


def test_fetch_data_without_a_network_is_one_line(tmp_path, capsys):
    fetch = _script("fetch_data")
    rc = fetch["main"](
        ["--data-dir", str(tmp_path / "d"), "--what", "math", "--base-url", "http://127.0.0.1:9/{ref}/"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: cannot download http://127.0.0.1:9/main/")
    assert not (tmp_path / "d").exists()  # no empty data directory left to look like data


def test_fetch_data_writes_where_the_tasks_read(monkeypatch):
    fetch = _script("fetch_data")
    assert fetch["default_data_dir"]() == REPO_ROOT.joinpath("data/llm_adapters").relative_to(REPO_ROOT)
    assert str(fetch["default_data_dir"]()) == compose(["task=math"]).task.data_dir
    monkeypatch.setenv("PERFT_DATA_DIR", "/elsewhere")
    assert str(fetch["default_data_dir"]()) == "/elsewhere"


def test_the_data_directory_is_git_ignored():
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/llm_adapters/math_50k.json"], cwd=REPO_ROOT)
    assert ignored.returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_bench_on_cuda_without_a_gpu_fails(capsys):
    assert _script("bench")["main"](["--device", "cuda"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: --device cuda: no CUDA device here; nothing was benchmarked"
    )
