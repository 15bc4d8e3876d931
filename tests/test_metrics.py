"""Metrics that tell knowledge from guessing: chance, majority label, skill, top-prediction share, and the
bootstrap intervals over questions and seeds; on rows in the exact format `evaluate()` writes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from perft_exp.analysis.bootstrap import SetArrays, bootstrap_intervals
from perft_exp.data.prompts import build_prompt
from perft_exp.evaluation import evaluate
from perft_exp.evaluation.evaluator import _row
from perft_exp.evaluation.extract import CHOICE_LABELS
from perft_exp.evaluation.metrics import (
    AVERAGE_KEYS,
    KNOWLEDGE_KEYS,
    answer_options,
    majority_hits,
    metrics_from_records,
    metrics_from_run_dir,
    metrics_table,
    read_records,
    set_metrics,
    with_knowledge_metrics,
)

# (set, labels of the test questions): balanced and unbalanced label distributions
BALANCED_BOOLQ = ["true", "false"] * 25
UNBALANCED_BOOLQ = ["true"] * 35 + ["false"] * 15
UNBALANCED_HELLASWAG = ["ending1"] * 20 + ["ending2"] * 5 + ["ending3"] * 15 + ["ending4"] * 10
LABEL_SETS = [
    ("boolq", BALANCED_BOOLQ),
    ("boolq", UNBALANCED_BOOLQ),
    ("hellaswag", UNBALANCED_HELLASWAG),
    ("winogrande", ["option1"] * 26 + ["option2"] * 24),
]


def _instruction(name: str, i: int, options: int | None = None) -> str:
    labels = CHOICE_LABELS[name][: options or len(CHOICE_LABELS[name])]
    choices = "\n\n".join(
        f"{label.capitalize()}: choice {k} of question {i}" for k, label in enumerate(labels)
    )
    return (
        f"Please choose the correct answer to question {i}.\n\n{choices}\n\nAnswer format: {'/'.join(labels)}"
    )


def _rows(name: str, labels: list, responses: list[str], options: list[int] | None = None) -> list[dict]:
    """Rows exactly as evaluate() builds them (its own _row: extraction and scoring included)."""
    options = options or [None] * len(labels)
    return [
        _row(name, i, build_prompt(_instruction(name, i, k)), response, label)
        for i, (label, response, k) in enumerate(zip(labels, responses, options))
    ]


@pytest.mark.parametrize("name, labels", LABEL_SETS)
def test_a_constant_predictor_has_no_skill(name, labels):
    for constant in CHOICE_LABELS[name]:
        m = set_metrics(name, _rows(name, labels, [f"the correct answer is {constant}"] * len(labels)))
        assert m["skill"] <= 1e-12, (constant, m)
        assert m["top_prediction"] == constant and m["top_prediction_share"] == 1.0
    best = max(sorted(set(labels)), key=labels.count)
    m = set_metrics(name, _rows(name, labels, [best] * len(labels)))
    assert m["skill"] == pytest.approx(0.0) and m["accuracy"] == m["majority"] == labels.count(best) / len(
        labels
    )
    assert labels.count(m["majority_label"]) == labels.count(best)  # (ties: either label)


@pytest.mark.parametrize("name, labels", LABEL_SETS)
def test_a_perfect_predictor_has_skill_one_minus_majority(name, labels):
    m = set_metrics(name, _rows(name, labels, [f"the correct answer is {label}" for label in labels]))
    assert m["accuracy"] == 1.0 and m["n"] == m["correct"] == len(labels)
    assert m["skill"] == pytest.approx(1.0 - max(labels.count(x) for x in set(labels)) / len(labels))
    assert m["top_prediction_share"] == max(labels.count(x) for x in set(labels)) / len(labels)


def test_a_random_guesser_scores_about_chance_and_no_skill():
    rng = random.Random(0)
    labels = [rng.choice(CHOICE_LABELS["hellaswag"]) for _ in range(4000)]
    guesses = [rng.choice(CHOICE_LABELS["hellaswag"]) for _ in labels]
    m = set_metrics("hellaswag", _rows("hellaswag", labels, guesses))
    assert m["chance"] == 0.25 and m["accuracy"] == pytest.approx(0.25, abs=0.03)
    assert m["skill"] < 0.01 and m["top_prediction_share"] < 0.3


def test_chance_counts_each_questions_options():
    # ARC / OBQA questions offer 3 to 5 answers: chance is the mean of 1/k, read from "Answer format:"
    rows = _rows("ARC-Challenge", ["answer1"] * 3, ["answer1"] * 3, options=[3, 4, 5])
    assert set_metrics("ARC-Challenge", rows)["chance"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3)
    assert answer_options("boolq") == 2 and answer_options("social_i_qa", "no format line") == 5
    assert answer_options("AQuA", "Answer Choices: (A) 1 (B) 2 (C) 3 (D) 4 (E) 5") == 5
    assert answer_options("gsm8k", "How many apples?") is None and answer_options("SVAMP") is None


def test_math_sets_majority_by_value_and_no_chance():
    labels = ["12", "12.0", "1,200", "7"]
    rows = [_row("gsm8k", i, build_prompt("q"), "The answer is 12", label) for i, label in enumerate(labels)]
    m = set_metrics("gsm8k", rows)
    assert m["chance"] is None and m["majority"] == 0.5 and m["accuracy"] == 0.5 and m["skill"] == 0.0
    aqua = [_row("AQuA", i, build_prompt("q"), "(B)", label) for i, label in enumerate("ABBCD")]
    assert set_metrics("AQuA", aqua)["chance"] == 0.2 and set_metrics("AQuA", aqua)["skill"] == 0.0


def test_failed_extractions_count_as_one_prediction():
    rows = _rows("boolq", BALANCED_BOOLQ, ["I cannot tell"] * 40 + ["true"] * 10)
    m = set_metrics("boolq", rows)
    assert m["top_prediction"] is None and m["top_prediction_share"] == 0.8


def test_averages_are_unweighted_and_chance_needs_every_set():
    sets = {
        "boolq": _rows("boolq", UNBALANCED_BOOLQ, ["true"] * 50),  # constant majority: acc .7, skill 0
        "piqa": _rows("piqa", ["solution1", "solution2"], ["solution1", "solution2"]),  # perfect: skill .5
    }
    m = metrics_from_records(sets)
    assert m["average"] == pytest.approx((0.7 + 1.0) / 2)
    assert m["average_skill"] == pytest.approx(0.25) and m["average_majority"] == pytest.approx(0.6)
    assert m["average_chance"] == 0.5 and m["max_top_prediction_share"] == 1.0
    assert m["average_top_prediction_share"] == pytest.approx((1.0 + 0.5) / 2)
    sets["gsm8k"] = [_row("gsm8k", 0, build_prompt("q"), "3", "3")]
    assert metrics_from_records(sets)["average_chance"] is None  # an open-answer set has no chance rate


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_metrics_read_the_records_evaluate_writes(tiny_lm, tiny_tokenizer, tmp_path, one_thread):
    sets = {
        "boolq": [
            {"instruction": f"Is {i} even? Answer format: true/false", "answer": ["true", "false"][i % 3 > 0]}
            for i in range(9)
        ],
        "ARC-Easy": [
            {"instruction": _instruction("ARC-Easy", i, 3 + i % 3), "answer": f"answer{1 + i % 2}"}
            for i in range(6)
        ],
        "gsm8k": [{"instruction": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(3)],
    }
    run_dir = tmp_path / "run"
    results = evaluate(
        tiny_lm, tiny_tokenizer, sets, max_new_tokens=4, out_dir=run_dir / "eval", progress=False
    )
    recomputed = metrics_from_run_dir(run_dir)
    for name in sets:
        written = {k: results[name][k] for k in ("accuracy", "n", "correct", *KNOWLEDGE_KEYS)}
        assert recomputed[name] == written
        rows = read_records(run_dir / "eval" / f"{name}.jsonl")
        assert {"prompt", "extracted", "label", "correct"} <= set(rows[0])
    for key in ("average", *AVERAGE_KEYS):
        assert recomputed[key] == results[key], key
    assert results["boolq"]["majority"] == pytest.approx(6 / 9)  # labels: 3 true, 6 false
    assert results["ARC-Easy"]["chance"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3)
    assert results["gsm8k"]["chance"] is None and results["average_chance"] is None

    # A results.json from before these metrics gets them back from its records.
    old = {name: {k: results[name][k] for k in ("accuracy", "n", "correct")} for name in sets}
    old["average"] = results["average"]
    upgraded = with_knowledge_metrics(json.loads(json.dumps(old)), run_dir / "eval")
    assert all(upgraded[k] == results[k] for k in AVERAGE_KEYS) and upgraded["boolq"] == recomputed["boolq"]
    assert with_knowledge_metrics(old, tmp_path / "no_records") == old  # nothing to read: unchanged


def test_run_dir_without_records_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no per-question records"):
        metrics_from_run_dir(tmp_path)


# --- bootstrap ---------------------------------------------------------------------------------------


def _arrays(n: int, accuracy: float, seed: int = 0, majority: float = 0.5) -> SetArrays:
    """`accuracy` of n questions right (which ones: by `seed`); the majority label fits the same questions
    for every seed (it is the test set's)."""
    correct = np.zeros(n, dtype=bool)
    correct[np.random.default_rng(seed).choice(n, size=round(accuracy * n), replace=False)] = True
    hit = np.zeros(n, dtype=bool)
    hit[np.random.default_rng(1234).choice(n, size=round(majority * n), replace=False)] = True
    return SetArrays(correct, hit)


def _width(ci: tuple[float, float]) -> float:
    return ci[1] - ci[0]


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_questions():
    small = bootstrap_intervals([{"boolq": _arrays(50, 0.6)}])
    large = bootstrap_intervals([{"boolq": _arrays(2000, 0.6)}])
    for ci in (small, large):
        lo, hi = ci["accuracy"]["boolq"]
        assert lo < 0.6 < hi and ci["accuracy"]["average"] == ci["accuracy"]["boolq"]
        lo, hi = ci["skill"]["boolq"]
        assert lo < 0.1 < hi  # skill = 0.6 - 0.5
    assert _width(large["accuracy"]["boolq"]) < _width(small["accuracy"]["boolq"]) / 4  # ~ 1/sqrt(n)
    assert _width(small["accuracy"]["boolq"]) == pytest.approx(2 * 1.96 * (0.6 * 0.4 / 50) ** 0.5, rel=0.2)


def test_bootstrap_over_seeds_is_deterministic_and_widens_when_seeds_disagree():
    seeds = [
        {"boolq": _arrays(200, p, seed=i), "piqa": _arrays(100, 0.5, seed=10 + i)}
        for i, p in enumerate((0.55, 0.7, 0.85))
    ]
    ci = bootstrap_intervals(seeds)
    assert ci == bootstrap_intervals(seeds)  # a fixed RNG seed
    assert ci != bootstrap_intervals(seeds, rng_seed=1)
    mean = np.mean([0.55, 0.7, 0.85])
    assert ci["accuracy"]["boolq"][0] < mean < ci["accuracy"]["boolq"][1]
    assert ci["accuracy"]["average"][0] < (mean + 0.5) / 2 < ci["accuracy"]["average"][1]
    assert ci["skill"]["boolq"][0] < mean - 0.5 < ci["skill"]["boolq"][1]
    one_seed = bootstrap_intervals([{"boolq": _arrays(200, 0.7, seed=1)}])
    assert _width(ci["accuracy"]["boolq"]) > 1.5 * _width(one_seed["accuracy"]["boolq"])


def test_seeds_that_answer_alike_are_no_more_certain_than_one():
    # The seeds answered the same questions: resampling draws the questions once for all of them
    # (independent draws per seed would shrink the interval by sqrt(3) here).
    one = {"boolq": _arrays(100, 0.7, seed=3)}
    three = bootstrap_intervals([one, one, one])["accuracy"]["boolq"]
    assert _width(three) == pytest.approx(_width(bootstrap_intervals([one])["accuracy"]["boolq"]), rel=0.1)


def test_bootstrap_of_a_constant_majority_predictor_has_zero_skill():
    hits = np.array([True] * 30 + [False] * 20)
    ci = bootstrap_intervals([{"boolq": SetArrays(hits.copy(), hits)}])
    assert ci["skill"]["boolq"] == (0.0, 0.0)


def test_majority_hits_mark_the_majority_label():
    rows = _rows("boolq", UNBALANCED_BOOLQ, ["true"] * 50)
    assert majority_hits("boolq", rows) == [label == "true" for label in UNBALANCED_BOOLQ]


def test_metrics_table_heads_the_scored_column_with_its_label():
    scores = {"boolq": {"accuracy": 0.6, "majority": 0.5, "skill": 0.1, "chance": 0.5}, "average": 0.6}
    assert metrics_table(scores).splitlines()[0].split()[:3] == ["test", "set", "base"]
    assert "tuned" in metrics_table(scores).splitlines()[0]
    header = metrics_table(scores, label="frozen").splitlines()[0]
    assert "frozen" in header and "tuned" not in header
