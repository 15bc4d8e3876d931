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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_every_gpu_check_stage_is_a_bench_command_line(capsys):
    """scripts/gpu_check.sh's stages pass bench's argument parser (an argparse error would exit before the
    no-GPU message): the script is only ever run on a lent GPU, with no time to rerun a typo."""
    import shlex

    main = _script("bench")["main"]
    text = (REPO_ROOT / "scripts" / "gpu_check.sh").read_text()
    cases = shlex.split(text.split("all=(", 1)[1].split(")", 1)[0])
    stages = [shlex.split(line)[3:] for line in text.splitlines() if line.startswith("stage ")]
    assert len(stages) == 6
    for args in stages:
        args = [a for arg in args for a in (cases if arg == "${all[@]}" else [arg])]
        assert main(["--device", "cuda", *args, "--json", "unused.json"]) == 2
        assert capsys.readouterr().err.strip().startswith("error: --device cuda: no CUDA device here")


def _small_bench_model():
    from perft_exp import bench

    return bench.BenchModel(
        "small",
        batch_size=1,
        seq_len=8,
        dtype="float32",
        overrides=dict(
            hidden_size=64,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_experts=8,
            num_experts_per_tok=2,
            vocab_size=128,
        ),
    )


def test_every_bench_case_attaches_and_generates():
    """Each case of scripts/bench.py --cases (the opt-in ones too) builds on a small OLMoE and decodes."""
    from perft_exp import bench

    base = bench.build_base(_small_bench_model(), "cpu")
    ids = torch.randint(3, 128, (2, 4), generator=torch.Generator().manual_seed(0))
    for name in bench.CASES:
        model = bench.attach(base, name).eval()
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False
        )
        assert out.shape == (2, 7), name


def test_bench_compile_generation_without_generate_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        _script("bench")["main"](["--compile", "generation"])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("--compile generation compiles the decode steps of --generate: add --generate")
    )


def test_bench_decode_parts_times_both_parts_and_counts_their_weights():
    """`scripts/bench.py --generate`'s decode-parts table on a small OLMoE: every time measured, the weights
    each part touches in the proportion of their shapes (E's A and B against gate_up and down: 2r / 3I)."""
    from perft_exp import bench

    small = _small_bench_model()
    rows = bench.decode_parts(bench.build_base(small, "cpu"), "cpu", token_counts=(1, 16), reps=2)
    assert list(rows) == ["1", "16"]
    for tokens, row in zip((1, 16), rows.values(), strict=True):
        assert row["tokens"] == tokens and row["pairs"] == 2 * tokens
        assert 2 <= row["experts_touched"] <= min(8, 2 * tokens)
        assert all(row[k] > 0 for k in row if k.endswith("_us"))
        assert row["bytes_ratio"] == pytest.approx(2 * 16 / (3 * 32))
        assert row["cold_ratio"] == pytest.approx(row["E_adapters_cold_us"] / row["frozen_experts_cold_us"])
        # each of E's paths forced, beside auto's pick (select for 2 pairs, the row sums for 32)
        assert {"E_select_warm_us", "E_gather_cold_us", "E_dense_warm_us"} <= set(row)
    assert [row["E_auto_path"] for row in rows.values()] == ["select", "gather"]
    table = _script("bench")["format_decode_parts"](rows)
    assert "E's PEFT experts by path" in table
    assert f"{rows['16']['E_gather_cold_us']:.0f} *" in table.splitlines()[-1]


def test_bench_targets_hold_decoding_eager_and_compiled_each_against_its_own_frozen():
    check_targets = _script("bench")["check_targets"]
    row = {"frozen@1": {"batch_size": 1, "decode_vs_frozen": 1.0}}
    eager = {**row, "E_r16@1": {"batch_size": 1, "decode_vs_frozen": 1.12}}
    compiled = {**row, "E_r16@1": {"batch_size": 1, "decode_vs_frozen": 1.06}}
    checks = {c["target"]: c for c in check_targets({}, eager, None, compiled)}
    assert set(checks) == {
        "E_r16@1 decode step <= 1.10x frozen",
        "E_r16@1 compiled decode step <= 1.10x compiled frozen",
    }
    assert not checks["E_r16@1 decode step <= 1.10x frozen"]["pass"]
    assert checks["E_r16@1 compiled decode step <= 1.10x compiled frozen"]["value"] == "1.060x"
    assert checks["E_r16@1 compiled decode step <= 1.10x compiled frozen"]["pass"]


def test_bench_rank_split_is_what_the_rank_costs():
    split = _script("bench")["rank_split"]
    cases = {
        "E_r16": {"ratio_vs_frozen": 1.08},
        "E_r1": {"ratio_vs_frozen": 1.02},
        "S_r16": {"ratio_vs_frozen": 0.95},
    }
    generation = {
        "E_r16@16": {"decode_vs_frozen": 1.10},
        "E_r1@16": {"decode_vs_frozen": 1.05},
        "R_top2of4_r16@1": {"decode_vs_frozen": 1.10},  # no rank-1 row: left out
    }
    rows = split(cases, generation)
    assert [(r["case"], r["where"]) for r in rows] == [
        ("E_r16", "training step"),
        ("E_r16", "decode, batch 16"),
    ]
    assert [r["rank_cost"] for r in rows] == [pytest.approx(0.06), pytest.approx(0.05)]
    table = _script("bench")["format_rank_split"](rows)
    assert "| E_r16 | decode, batch 16 | 1.100 | 1.050 | +0.050 |" in table
    # the rank-1 cases are diagnostics: no decode target of their own
    checks = _script("bench")["check_targets"](
        {}, {k: {**v, "batch_size": 16} for k, v in generation.items()}
    )
    assert [c["target"].split()[0] for c in checks] == ["E_r16@16", "R_top2of4_r16@1"]


def test_bench_profile_attributes_a_case_s_extra_time_to_its_ops():
    """`scripts/bench.py --profile`: each case's step op by op, the difference from its baseline summed right,
    and E's extra matmuls (its grouped matmuls) found among them."""
    from perft_exp import bench

    small = _small_bench_model()
    base = bench.build_base(small, "cpu")
    batch = bench.make_batch(small, "cpu")
    cases = {name: bench.Case(name, base) for name in ("frozen", "S_r16", "E_r16")}
    profiles = bench.profile_steps(cases, batch, "cpu", visits=1, steps=1)
    assert set(profiles) == set(cases)
    assert all(ms > 0 for ops in profiles.values() for ms in ops.values())
    assert "aten::_grouped_mm" in profiles["E_r16"]  # E's PEFT experts (and the frozen experts') matmuls
    diff = bench.profile_difference(profiles, "E_r16", "S_r16", top=5)
    e, s = (sum(profiles[name].values()) for name in ("E_r16", "S_r16"))
    assert diff["extra_ms"] == pytest.approx(e - s)
    assert diff["matmul_extra_ms"] == pytest.approx(
        sum(profiles["E_r16"].get(op, 0.0) - profiles["S_r16"].get(op, 0.0) for op in bench.MATMUL_OPS)
    )
    extras = [abs(row["extra_ms"]) for row in diff["ops"]]
    assert len(extras) == 5 and extras == sorted(extras, reverse=True)
    table = _script("bench")["format_profile"](diff)
    assert table.startswith("E_r16 over S_r16: ") and f"| {diff['ops'][0]['op']} |" in table


def test_bench_profile_baseline_is_a_case():
    with pytest.raises(SystemExit) as exit_:
        _script("bench")["main"](["--profile", "nonsense"])
    assert exit_.value.code == 2
