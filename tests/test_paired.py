"""Paired comparisons between configurations: the paired bootstrap of a difference in average skill
(perft_exp/analysis/bootstrap.py) and the pairs collect_results.py writes (perft_exp/analysis/paired.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from perft_exp.analysis.bootstrap import SetArrays, bootstrap_intervals, paired_difference
from perft_exp.analysis.paired import compare, paired_markdown, write_paired
from perft_exp.analysis.results.runs import Collection, Run

N = 200  # questions per test set
SETS = ("boolq", "piqa")


def _majority(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: rng.random(N) < 0.5 for name in SETS}


def _seed(correct: dict[str, np.ndarray], majority: dict[str, np.ndarray]) -> dict[str, SetArrays]:
    return {name: SetArrays(correct[name], majority[name]) for name in SETS}


def _planted(seeds: int = 3, flips: int = 16):
    """A answers 60 % right; B is A with `flips` of A's right answers per set turned wrong:
    A - B = flips / N."""
    rng = np.random.default_rng(1)
    majority = _majority(rng)
    a, b = [], []
    for _ in range(seeds):
        correct = {name: rng.random(N) < 0.6 for name in SETS}
        worse = {}
        for name in SETS:
            worse[name] = correct[name].copy()
            worse[name][rng.choice(np.flatnonzero(correct[name]), flips, replace=False)] = False
        a.append(_seed(correct, majority))
        b.append(_seed(worse, majority))
    return a, b


def test_a_planted_difference_excludes_zero():
    a, b = _planted()
    d = paired_difference(a, b)
    assert d.difference == pytest.approx(16 / N)  # the planted 8 points
    assert d.excludes_zero and 0 < d.lo < d.difference < d.hi
    assert paired_difference(b, a).difference == pytest.approx(-d.difference)


def test_the_paired_interval_separates_what_overlapping_marginal_intervals_do_not():
    """The same planted difference: each config's own 95 % interval overlaps the other's, the paired one does
    not."""
    a, b = _planted()
    ci_a, ci_b = bootstrap_intervals(a)["skill"]["average"], bootstrap_intervals(b)["skill"]["average"]
    assert ci_a[0] < ci_b[1]  # the marginal intervals overlap
    assert paired_difference(a, b).excludes_zero


def test_no_difference_includes_zero():
    """Two configs drawn from the same distribution (60 % right), independently per question and seed."""
    rng = np.random.default_rng(2)
    majority = _majority(rng)
    a = [_seed({n: rng.random(N) < 0.6 for n in SETS}, majority) for _ in range(3)]
    b = [_seed({n: rng.random(N) < 0.6 for n in SETS}, majority) for _ in range(3)]
    d = paired_difference(a, b)
    assert not d.excludes_zero and d.lo < 0 < d.hi
    same = paired_difference(a, a)
    assert (same.difference, same.lo, same.hi) == (0.0, 0.0, 0.0) and not same.excludes_zero


def test_configs_that_do_not_line_up_are_not_paired():
    a, b = _planted()
    assert paired_difference(a, b[:2]) is None  # other seed counts
    shorter = [{n: SetArrays(s[n].correct[:-1], s[n].majority_hit[:-1]) for n in SETS} for s in b]
    assert paired_difference(a, shorter) is None  # other questions
    assert paired_difference(a, [{"boolq": s["boolq"]} for s in b]) is None  # other test sets


def _runs(name: str, variant: str, config: str, arrays: list[dict[str, SetArrays]], seeds) -> list[Run]:
    return [
        Run(
            model="tiny_olmoe",
            task="synthetic_commonsense",
            variant=variant,
            config=config,
            bottleneck=8,
            accuracy={n: float(np.mean(s[n].correct)) for n in SETS},
            average=None,
            seed=seed,
            name=f"{name}-s{seed}",
            group=name,
            arrays=s,
        )
        for seed, s in zip(seeds, arrays)
    ]


def test_collect_results_writes_every_pair_with_its_verdict(tmp_path):
    a, b = _planted()
    runs = (
        _runs("toy-R-n4-k2-r8", "R", "R (Top2/4)", a, (0, 1, 2))
        + _runs("toy-S-r8", "S", "S (1)", b, (0, 1, 2))
        + _runs("toy-D-n4-r8", "D", "D (4)", b[:1], (0,))
    )
    pairs = compare(runs)
    assert [(p.a, p.b) for p in pairs] == [
        ("R (Top2/4) r8", "D (4) r8"),
        ("R (Top2/4) r8", "S (1) r8"),
        ("D (4) r8", "S (1) r8"),
    ]  # table order: R, E, D, S
    by_b = {(p.a, p.b): p for p in pairs}
    assert by_b[("R (Top2/4) r8", "S (1) r8")].verdict() == "R (Top2/4) r8 > S (1) r8"
    assert by_b[("R (Top2/4) r8", "D (4) r8")].result is None  # one seed against three

    files = write_paired(Collection(runs, []), tmp_path)
    md = files["paired_md"].read_text()
    assert "| R (Top2/4) r8 | S (1) r8 | **+8.0** |" in md and "1 of 1 differences exclude 0." in md
    assert "- R (Top2/4) r8 / D (4) r8: seeds (0, 1, 2) against (0,)" in md
    rows = list(csv.DictReader(open(files["paired_csv"])))
    assert len(rows) == 3
    row = next(r for r in rows if r["b"] == "S (1) r8")
    assert row["excludes_zero"] == "True" and float(row["difference"]) == pytest.approx(0.08)
    assert paired_markdown([]).endswith("No two configurations to compare.")
