"""The results collector on synthetic results.json fixtures: CSV / Markdown / PNG files, the table's rows."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from perft_exp.analysis.results.report import write_report
from perft_exp.analysis.results.runs import collect, config_label, group_name
from perft_exp.analysis.results.tables import markdown_table, skill_table
from perft_exp.data.formats import COMMONSENSE_TEST_SETS
from perft_exp.data.prompts import build_prompt
from perft_exp.evaluation.evaluator import _row
from perft_exp.evaluation.extract import CHOICE_LABELS
from perft_exp.evaluation.metrics import metrics_from_records

COMMONSENSE = list(COMMONSENSE_TEST_SETS)
MATH = ["AddSub", "MultiArith", "SingleEq", "gsm8k", "AQuA", "SVAMP"]
BASE_ACTIVE, BASE_TOTAL, D_MODEL, LAYERS = 1_280_000_000, 6_920_000_000, 2048, 16


def _eval(sets: list[str], level: float) -> dict:
    ev = {s: {"accuracy": min(1.0, level + 0.01 * i), "n": 100, "correct": 0} for i, s in enumerate(sets)}
    ev["average"] = sum(v["accuracy"] for v in ev.values()) / len(sets)
    return ev


def _params(variant: str, r: int, n: int | None, k: int | None) -> dict:
    """OLMoE-1B-7B-like counts (docs/method.md formulas), good enough for a fixture."""
    per_expert = 2 * D_MODEL * r * LAYERS
    n, k = n or 1, k or 1
    trainable, activated = {
        "R": (n * per_expert + D_MODEL * n * LAYERS, k * per_expert + D_MODEL * n * LAYERS),
        "E": (64 * per_expert, 8 * per_expert),
        "D": (n * per_expert, n * per_expert),
        "S": (per_expert, per_expert),
        "qv_lora": (2 * per_expert, 2 * per_expert),
    }[variant]
    return {
        "trainable": trainable,
        "activated_trainable": activated,
        "base_total": BASE_TOTAL,
        "base_active": BASE_ACTIVE,
        "trainable_ratio": trainable / BASE_TOTAL,
        "activated_ratio": activated / BASE_ACTIVE,
    }


def write_run(
    root: Path,
    task: str,
    variant: str,
    r: int,
    n=None,
    k=None,
    level=0.6,
    *,
    train_file=None,
    base=True,
    model="olmoe_1b_7b",
) -> Path:
    name = {"R": f"R-n{n}-k{k}-r{r}", "D": f"D-n{n}-r{r}"}.get(variant, f"{variant}-r{r}")
    run_dir = root / task / model / name
    (run_dir / "adapter").mkdir(parents=True)
    sets = COMMONSENSE if task == "commonsense" else MATH
    train_file = train_file or ("commonsense_170k" if task == "commonsense" else "math_50k")
    perft = {
        "variant": variant,
        "num_experts": n,
        "top_k": k,
        "bottleneck": r,
        "alpha": None,
        "dropout": 0.05,
        "form": "lora",
        "init": "paper",
        "authors_weighting_defect": False,
    }
    results = {
        "variant": variant,
        "variant_name": f"{variant} r{r}",
        "perft": perft,
        "model": model,
        "task": task,
        "train_file": train_file,
        "contaminated_test_sets": ["AddSub", "MultiArith", "SingleEq"] if train_file == "math_10k" else [],
        "params": _params(variant, r, n, k),
        "train": {"steps": 100, "final_loss": 0.5, "runtime_s": 10.0},
        "eval": _eval(sets, level),
        "output_dir": str(run_dir),
    }
    if base:
        results["base_eval"] = _eval(sets, 0.3)
    (run_dir / "results.json").write_text(json.dumps(results))
    signature = {"num_experts": 64, "num_experts_per_tok": 8}
    (run_dir / "adapter" / "adapter_config.json").write_text(json.dumps({"base_signature": signature}))
    return run_dir


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for r, level in ((4, 0.62), (16, 0.66)):
        write_run(root, "commonsense", "R", r, 4, 2, level)
        write_run(root, "commonsense", "E", r, level=level + 0.04)
        write_run(root, "commonsense", "S", r, level=level - 0.05)
        write_run(root, "commonsense", "D", r, 4, level=level - 0.02)
        write_run(root, "commonsense", "qv_lora", r, level=level - 0.08)
    write_run(root, "math", "R", 8, 2, 2, 0.4, train_file="math_10k", base=False)
    write_run(root, "math", "qv_lora", 8, level=0.35, train_file="math_10k", base=False)
    failed = root / "commonsense" / "olmoe_1b_7b" / "S-r64"
    failed.mkdir(parents=True)
    (failed / "failed.json").write_text(json.dumps({"error": "CUDA out of memory", "type": "RuntimeError"}))
    return root


def test_config_labels_follow_the_paper():
    assert config_label({"variant": "R", "num_experts": 4, "top_k": 2, "bottleneck": 16}) == "R (Top2/4)"
    assert config_label({"variant": "E", "bottleneck": 16}, 8, 64) == "E (Top8/64)"
    assert config_label({"variant": "D", "num_experts": 4, "bottleneck": 16}) == "D (4)"
    assert config_label({"variant": "S", "bottleneck": 16}) == "S (1)"
    assert config_label({"variant": "qv_lora", "bottleneck": 16}) == "qv-LoRA"
    assert (
        config_label(
            {
                "variant": "R",
                "num_experts": 4,
                "top_k": 2,
                "bottleneck": 16,
                "alpha": 8.0,
                "authors_weighting_defect": True,
            }
        )
        == "R (Top2/4) [alpha=8, authors' defect]"
    )


def test_collector_writes_csv_markdown_and_figures(runs_root: Path, tmp_path: Path):
    out = tmp_path / "report"
    files = write_report(runs_root, out)
    for name in (
        "results.csv",
        "results.md",
        "efficiency-commonsense-olmoe_1b_7b.png",
        "bottleneck-commonsense-olmoe_1b_7b.png",
        "efficiency-math-olmoe_1b_7b.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        assert (out / name) in files.values()
    assert (out / "efficiency-commonsense-olmoe_1b_7b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = list(csv.DictReader(open(out / "results.csv")))
    commonsense = [r for r in rows if r["task"] == "commonsense"]
    assert len(commonsense) == 11  # 10 runs + the base model
    assert [r["config"] for r in commonsense].count("base model") == 1
    r16 = next(r for r in commonsense if r["config"] == "R (Top2/4)" and r["bottleneck"] == "16")
    assert float(r16["average"]) == pytest.approx(0.66 + 0.035)
    assert float(r16["activated_ratio"]) < float(r16["trainable_ratio"]) * BASE_TOTAL / BASE_ACTIVE


def test_markdown_table_rows_and_contamination(runs_root: Path, tmp_path: Path):
    collection = collect(runs_root)
    groups = collection.groups()
    assert set(groups) == {("olmoe_1b_7b", "commonsense"), ("olmoe_1b_7b", "math")}

    table = markdown_table(groups[("olmoe_1b_7b", "commonsense")]).splitlines()
    header, body = table[0], table[2:]
    assert header.split(" | ")[:5] == ["| Config", "r", "Trainable %", "Activated %", "BoolQ"]
    assert len(body) == 11
    assert body[0].startswith("| base model |")  # the base model first, then baselines, then R, E, D, S
    configs = [line.split(" | ")[0].lstrip("| ") for line in body]
    assert configs == [
        "base model",
        "qv-LoRA",
        "qv-LoRA",
        "R (Top2/4)",
        "R (Top2/4)",
        "E (Top8/64)",
        "E (Top8/64)",
        "D (4)",
        "D (4)",
        "S (1)",
        "S (1)",
    ]
    e16 = next(line for line in body if line.startswith("| E (Top8/64) | 16 |"))
    assert "**70.00**" in e16  # the best BoolQ (0.66 + 0.04) is bold

    math_table = markdown_table(groups[("olmoe_1b_7b", "math")])
    assert "AddSub †" in math_table and "GSM8K |" in math_table and "Avg. w/o †" in math_table
    assert "base model" not in math_table  # no base_eval in these runs

    out = tmp_path / "report"
    write_report(runs_root, out)
    md = (out / "results.md").read_text()
    assert "## olmoe_1b_7b / commonsense" in md and "† contaminated" in md
    assert "## Failed runs" in md and "CUDA out of memory" in md


def test_collector_skips_failed_marker_of_a_finished_retry(runs_root: Path):
    retried = write_run(runs_root, "commonsense", "S", 32, level=0.5)
    (retried / "failed.json").write_text(json.dumps({"error": "old failure"}))
    collection = collect(runs_root)
    assert all("old failure" not in err for _, err in collection.failed)
    assert any(r.name == "S-r32" for r in collection.runs)


def test_collector_ignores_re_evaluations_and_filters_by_run_name(runs_root: Path):
    run = runs_root / "commonsense" / "olmoe_1b_7b" / "S-r4"
    (run / "evaluations" / "commonsense-paper").mkdir(parents=True)
    (run / "evaluations" / "commonsense-paper" / "results.json").write_text(json.dumps({"eval": {}}))
    assert len(collect(runs_root).runs) == 13  # 12 runs + the commonsense base model
    only_r = collect(runs_root, "R-*")
    assert {r.config for r in only_r.runs} == {"R (Top2/4)", "R (Top2/2)", "base model"} and not only_r.failed


# --- seeds, intervals and skill from per-question records ------------------------------------------

SEED_SETS = {"boolq": ["true"] * 35 + ["false"] * 15, "piqa": ["solution1", "solution2"] * 20}
OTHER = {"true": "false", "false": "true", "solution1": "solution2", "solution2": "solution1"}


def _records(n_right: dict[str, int]) -> dict[str, list[dict]]:
    """Rows as evaluate() writes them: the first n_right[set] questions answered right, the rest wrong."""
    return {
        name: [
            _row(
                name,
                i,
                build_prompt(f"Question {i}?\n\nAnswer format: {'/'.join(CHOICE_LABELS[name])}"),
                f"the correct answer is {label if i < n_right[name] else OTHER[label]}",
                label,
            )
            for i, label in enumerate(labels)
        ]
        for name, labels in SEED_SETS.items()
    }


def write_seed_run(
    root: Path,
    name: str,
    variant: str,
    seed: int | None,
    n_right: dict[str, int],
    *,
    old: bool = False,
    records: bool = True,
) -> Path:
    """A run directory with eval/<set>.jsonl; `old`: a results.json from before seeds and skill metrics."""
    run_dir = root / "synthetic_commonsense" / "tiny_olmoe" / name
    (run_dir / "eval").mkdir(parents=True)
    sets = _records(n_right)
    ev = metrics_from_records(sets)
    if records:
        for set_name, rows in sets.items():
            (run_dir / "eval" / f"{set_name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    perft = {
        "variant": variant,
        "num_experts": 4,
        "top_k": 2,
        "bottleneck": 8,
        "alpha": None,
        "form": "lora",
        "init": "paper",
        "authors_weighting_defect": False,
    }
    results = {
        "variant": variant,
        "perft": perft,
        "model": "tiny_olmoe",
        "task": "synthetic_commonsense",
        "train_file": "train",
        "params": _params(variant, 8, 4, 2),
        "eval": ev,
    }
    if old:
        results["eval"] = {s: {k: ev[s][k] for k in ("accuracy", "n", "correct")} for s in sets}
        results["eval"]["average"] = ev["average"]  # and no average_skill, ...
    else:
        results["seed"] = seed
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.fixture
def seeds_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, right in (
        (0, {"boolq": 40, "piqa": 30}),
        (1, {"boolq": 45, "piqa": 34}),
        (2, {"boolq": 38, "piqa": 26}),
    ):
        write_seed_run(root, f"toy-R-n4-k2-r8-s{seed}", "R", seed, right)
    write_seed_run(root, "toy-S-r8-s0", "S", 0, {"boolq": 35, "piqa": 20})  # a constant-ish one, one seed
    write_seed_run(root, "qv_lora-r8", "qv_lora", None, {"boolq": 42, "piqa": 22}, old=True)
    write_seed_run(root, "D-n4-r8", "D", None, {"boolq": 30, "piqa": 20}, old=True, records=False)
    return root


def _body(table: str) -> dict[str, list[str]]:
    return {
        line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in table.splitlines()[2:]
    }


def test_seeds_are_one_row_with_bootstrap_intervals(seeds_root: Path):
    collection = collect(seeds_root)
    assert len(collection.runs) == 6 and sorted(r.seed for r in collection.runs if r.seed is not None) == [
        0,
        0,
        1,
        2,
    ]
    runs = collection.groups()[("tiny_olmoe", "synthetic_commonsense")]
    table = markdown_table(runs)
    header = table.splitlines()[0].strip("| ").split(" | ")
    assert header[:6] == ["Config", "r", "Trainable %", "Activated %", "BoolQ", "PIQA"]
    assert header[-3:] == ["Avg.", "Seeds", "Run"]
    rows = _body(table)
    assert list(rows) == ["qv-LoRA", "R (Top2/4)", "D (4)", "S (1)", "*majority label*", "*chance*"]

    r = rows["R (Top2/4)"]
    assert r[-2:] == ["0,1,2", "toy-R-n4-k2-r8"]
    boolq = np.mean([40, 45, 38]) / 50
    mean, lo, hi = (float(x) for x in re.fullmatch(r"\**([\d.]+)\** \[([\d.]+), ([\d.]+)\]", r[4]).groups())
    assert mean == pytest.approx(100 * boolq, abs=0.005) and lo < mean < hi
    avg_mean, avg_lo, avg_hi = (
        float(x) for x in re.fullmatch(r"\**([\d.]+)\** \[([\d.]+), ([\d.]+)\]", r[6]).groups()
    )
    assert avg_lo < avg_mean < avg_hi and avg_mean == pytest.approx(
        100 * (boolq + np.mean([30, 34, 26]) / 40) / 2, abs=0.005
    )
    assert re.fullmatch(r"[\d.]+ \[[\d.]+, [\d.]+\]", rows["S (1)"][4]) and rows["S (1)"][-2:] == [
        "0",
        "toy-S-r8-s0",
    ]
    # an old results.json: the interval from its records, no seed; without records: plain numbers
    assert re.fullmatch(r"[\d.*]+ \[[\d.]+, [\d.]+\]", rows["qv-LoRA"][4]) and rows["qv-LoRA"][-2] == "–"
    assert rows["D (4)"][4] == "60.00"
    assert rows["*majority label*"][4:7] == ["70.00", "50.00", "60.00"]
    assert rows["*chance*"][4:7] == ["50.00", "50.00", "50.00"]
    # the same records give the same table
    assert markdown_table(collect(seeds_root).groups()[("tiny_olmoe", "synthetic_commonsense")]) == table


def test_skill_table_and_old_results(seeds_root: Path, tmp_path: Path):
    runs = collect(seeds_root).groups()[("tiny_olmoe", "synthetic_commonsense")]
    qv = next(r for r in runs if r.variant == "qv_lora")
    assert qv.averages["average_skill"] == pytest.approx(
        ((42 - 35) / 50 + (22 - 20) / 40) / 2
    )  # from its records
    assert next(r for r in runs if r.variant == "D").averages == {}  # no records: left blank
    table = skill_table(runs)
    assert table.splitlines()[0].strip("| ").split(" | ")[-4:] == ["Avg.", "Top share %", "Seeds", "Run"]
    rows = _body(table)
    s = rows["S (1)"]
    assert s[2].startswith("+0.0 [") and s[-3] == "100"  # the majority answer to every boolq question
    assert re.fullmatch(r"\*\*\+[\d.]+\*\* \[\+[\d.]+, \+[\d.]+\]", rows["R (Top2/4)"][3])  # best PIQA skill
    assert rows["D (4)"][2] == "–"

    out = tmp_path / "report"
    write_report(seeds_root, out)
    md = (out / "results.md").read_text()
    assert "### Skill: tiny_olmoe / synthetic_commonsense" in md and "*majority label*" in md
    for png in ("efficiency", "bottleneck"):
        assert (out / f"{png}-synthetic_commonsense-tiny_olmoe.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 6  # one row per seed
    r1 = next(r for r in rows if r["run"] == "toy-R-n4-k2-r8-s1")
    assert (r1["seed"], r1["group"]) == ("1", "toy-R-n4-k2-r8")
    assert float(r1["average_skill"]) == pytest.approx(((45 - 35) / 50 + (34 - 20) / 40) / 2)
    assert float(r1["average_majority"]) == pytest.approx(0.6) and float(r1["average_chance"]) == 0.5


def test_group_names_drop_only_the_seed_suffix():
    assert group_name("toy-R-n4-k2-r8-s1", 1) == "toy-R-n4-k2-r8"
    assert group_name("R-n4-k2-r16-s3-07ced8", 3) == "R-n4-k2-r16-07ced8"
    assert group_name("R-n4-k2-r16", 42) == "R-n4-k2-r16" and group_name("S-r8-s1", None) == "S-r8-s1"


def test_labels_of_nearby_points_do_not_overlap(tmp_path):
    """Efficiency-plot labels of points at nearly the same cost and accuracy are moved apart (item 8)."""
    import matplotlib.pyplot as plt

    from perft_exp.analysis.results.figures import efficiency_figure

    root = tmp_path / "runs"
    # two R points a point of accuracy apart at one cost, two S points a tenth of a decade apart at one
    # accuracy, and a far qv-LoRA point that stretches the y axis so one point is less than a label's height
    for variant, r, n, k, level in (
        ("R", 8, 4, 2, 0.60),
        ("R", 8, 8, 2, 0.61),
        ("S", 8, None, None, 0.50),
        ("S", 10, None, None, 0.50),
        ("qv_lora", 64, None, None, 0.20),
    ):
        write_run(root, "commonsense", variant, r, n, k, level=level)
    fig = efficiency_figure([r for r in collect(root).runs if r.variant != "none"])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts]
    plt.close(fig)
    assert len(boxes) == 5
    assert not [(i, j) for i in range(5) for j in range(i) if boxes[i].overlaps(boxes[j])]


def test_a_run_that_changed_the_defaults_is_marked_in_the_table(tmp_path):
    """A smoke run (trainer=debug) never passes for the real config in results.md (item 2)."""
    run_dir = write_run(tmp_path, "commonsense", "S", 8)
    results = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**results, "config_changes": ["trainer=debug"]}))
    assert [r.config for r in collect(tmp_path).runs if r.variant == "S"] == ["S (1) {trainer=debug}"]


def test_E_is_labelled_from_its_resolved_results_and_older_null_ones_from_the_adapter(tmp_path: Path):
    """A resolved run records E's N and K in its results; one written before that (nulls) still loads, its
    label then read from the saved adapter's base-model signature."""
    old = write_run(tmp_path, "commonsense", "E", 16)  # perft num_experts/top_k null; an adapter with 64/8
    new = write_run(tmp_path, "commonsense", "E", 8, model="mixtral_8x7b")
    results = json.loads((new / "results.json").read_text())
    results["perft"] |= {"num_experts": 8, "top_k": 2, "aux_loss_coef": 0.02}
    (new / "results.json").write_text(json.dumps(results))
    shutil.rmtree(new / "adapter")  # the label must come from the results alone
    labels = {run.model: run.config for run in collect(tmp_path).runs if run.variant == "E"}
    assert labels == {"olmoe_1b_7b": "E (Top8/64)", "mixtral_8x7b": "E (Top2/8)"}
    assert old.is_dir()
