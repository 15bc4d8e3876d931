"""The named models (conf/model/<name>.yaml) from tiny stand-ins in the hub's layout: per-expert tensors where
the hub has them, two safetensors shards with an index, a transformers-4-style config.json. They load through
`model.pretrained=<dir>`, are counted from their own config, and (slow) train R and E through train.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_train
from standin import write_standin

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.model import apply_adapters
from perft_exp.config import compose_spec
from perft_exp.models.arch import architecture_for, find_moe_blocks
from perft_exp.models.loading import load_model

NAMED = [
    "deepseek_v2_lite",
    "moonlight_16b_a3b",
    "gpt_oss_20b",
    "glm45_air",
    "granite_3_1_3b_a800m",
    "phi35_moe",
    "llama4_scout",
    "qwen3_next_80b_a3b",
]
PER_EXPERT_ON_HUB = {"deepseek_v2_lite", "moonlight_16b_a3b", "glm45_air", "phi35_moe", "qwen3_next_80b_a3b"}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from perft_exp.models.tiny.build import build_tokenizer
    from perft_exp.models.tiny_spec import TINY_SPECS

    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(TINY_SPECS["tiny_olmoe"]).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def standin(tmp_path_factory, tokenizer_dir):
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = write_standin(name, tmp_path_factory.mktemp("standin") / name, tokenizer_dir)
        return made[name]

    return get


@pytest.mark.parametrize("name", NAMED)
def test_a_standin_loads_in_the_hubs_layout_and_takes_E(name, standin):
    path = standin(name)
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) == 2
    assert json.loads((path / "config.json").read_text())["transformers_version"].startswith("4.")
    assert any(".experts.0." in k for k in index) == (name in PER_EXPERT_ON_HUB), sorted(index)[:12]
    cfg = compose_spec([f"model={name}", f"model.pretrained={path}", "model.dtype=float32"]).model
    model, tokenizer = load_model(cfg)
    arch = architecture_for(model)
    assert find_moe_blocks(model, arch)
    model = apply_adapters(model, PerftConfig(variant="E", num_experts=None, top_k=None, bottleneck=4))
    ids = tokenizer("a stand-in checkpoint", return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_count_params_counts_the_checkpoint_model_pretrained_points_at(standin):
    path = standin("gpt_oss_20b")
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "count_params.py"),
            "model=gpt_oss_20b",
            f"model.pretrained={path}",
            "variant=none",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["base_total"] < 10_000_000  # the stand-in's, not the 21B of the YAML


@pytest.mark.slow
@pytest.mark.parametrize("name", ["moonlight_16b_a3b", "gpt_oss_20b"])
@pytest.mark.parametrize("variant", ["R", "E"])
def test_a_standin_trains_through_train_py(name, variant, standin, app_env, tmp_path):
    path = standin(name)
    perft = ["perft.num_experts=null", "perft.top_k=null"] if variant == "E" else []
    args = [
        f"model={name}",
        f"model.pretrained={path}",
        "model.dtype=float32",
        f"variant={variant}",
        *perft,
        "trainer=debug",
        "logger=none",
        "task.max_train_examples=16",
        "task.max_test_examples=1",
        "eval.enabled=false",
        f"hydra.run.dir={tmp_path}",
    ]
    result = run_train(args, app_env)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "run_config.json").read_text())
    loaded = json.loads((path / "config.json").read_text())
    assert saved["model"]["architecture"]["hidden_size"] == loaded["hidden_size"] == 32  # not the YAML's
    assert json.loads((tmp_path / "results.json").read_text())["train"]["steps"] > 0
