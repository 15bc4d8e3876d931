"""The synthetic world and suites: deterministic, in the LLM-Adapters formats, train/test held apart."""

from __future__ import annotations

import json
import re
import time

import pytest

from perft_exp.data import synthetic

LABELS = {
    "boolq": {"true", "false"},
    "piqa": {"solution1", "solution2"},
    "social_i_qa": {"answer1", "answer2", "answer3"},
    "hellaswag": {"ending1", "ending2", "ending3", "ending4"},
    "winogrande": {"option1", "option2"},
    "ARC-Easy": {"answer1", "answer2", "answer3", "answer4"},
    "ARC-Challenge": {"answer1", "answer2", "answer3", "answer4", "answer5"},
    "openbookqa": {"answer1", "answer2", "answer3", "answer4"},
}


@pytest.fixture(scope="module")
def commonsense():
    return synthetic.make_suite("commonsense", n_train=400, n_test=40, seed=0)


@pytest.fixture(scope="module")
def math_suite():
    return synthetic.make_suite("math", n_train=300, n_test=30, seed=0)


def test_deterministic_in_seed_and_sizes():
    assert synthetic.make_suite("commonsense", 80, 5, seed=3) == synthetic.make_suite(
        "commonsense", 80, 5, seed=3
    )
    assert synthetic.make_suite("math", 60, 5, seed=3) == synthetic.make_suite("math", 60, 5, seed=3)
    assert synthetic.make_suite("commonsense", 80, 5, seed=3) != synthetic.make_suite(
        "commonsense", 80, 5, seed=4
    )
    assert synthetic.pretraining_corpus(seed=1, n=50) == synthetic.pretraining_corpus(seed=1, n=50)


def test_commonsense_records_follow_the_llm_adapters_format(commonsense):
    train, tests = commonsense
    assert list(tests) == list(synthetic.TEST_SETS["commonsense"])
    for name, records in tests.items():
        assert len(records) == 40
        seen = set()
        for r in records:
            assert set(r) == {"instruction", "input", "output", "answer"} and r["input"] == ""
            assert r["output"] == f"the correct answer is {r['answer']}"
            assert r["answer"] in LABELS[name]
            offered = r["instruction"].rsplit("Answer format: ", 1)[1].split("/")
            assert r["answer"] in offered and set(offered) <= LABELS[name]
            seen.add(r["answer"])
        assert seen == LABELS[name] or name == "ARC-Challenge" and len(seen) >= 4, (name, seen)
    assert tests["boolq"][0]["instruction"].startswith(
        "Please answer the following question with true or false"
    )
    assert "\n\nSolution1: " in tests["piqa"][0]["instruction"]
    # The training file mixes every format.
    formats = {r["instruction"].rsplit("Answer format: ", 1)[1] for r in train}
    assert {f.split("/")[0] for f in formats} == {"true", "solution1", "answer1", "ending1", "option1"}


def test_math_records(math_suite):
    train, tests = math_suite
    assert list(tests) == list(synthetic.TEST_SETS["math"])
    for name, records in tests.items():
        for r in records:
            if name == "AQuA":
                assert r["answer"] in "ABCDE" and "Answer Choices: (A) " in r["instruction"]
            else:
                float(r["answer"])
            assert r["output"].endswith(f"The answer is {r['answer'].removesuffix('.0')}")
    # The rationale's arithmetic is right.
    for r in train:
        for x, op, y, z in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", r["output"]):
            assert eval(f"{x} {op} {y}") == int(z)


@pytest.mark.parametrize("kind", ["commonsense", "math"])
def test_train_and_test_questions_are_distinct(kind, commonsense, math_suite):
    train, tests = commonsense if kind == "commonsense" else math_suite
    train_q = {r["instruction"] for r in train}
    test_q = [r["instruction"] for records in tests.values() for r in records]
    assert len(set(test_q)) == len(test_q)
    assert train_q.isdisjoint(test_q)


def test_test_questions_ask_only_about_held_out_facts(commonsense):
    world = synthetic.build_world()
    for relation in synthetic.OBJECT_RELATIONS + synthetic.PERSON_RELATIONS + ("taller",):
        train_s, test_s = world.subjects(relation, "train"), world.subjects(relation, "test")
        assert set(train_s).isdisjoint(test_s) and len(test_s) >= len(train_s) - 1 > 0
    train, tests = commonsense
    material = re.compile(r"which material is the (\w+) made of\?|what is the (\w+) made of\?")
    asked = {
        split: {m.group(1) or m.group(2) for r in records if (m := material.search(r["instruction"]))}
        for split, records in (("train", train), ("test", tests["ARC-Easy"]))
    }
    assert asked["test"] and asked["test"] <= set(world.subjects("material", "test"))
    assert asked["train"] <= set(world.subjects("material", "train"))


def test_pretraining_corpus_states_facts_without_the_question_format():
    corpus = synthetic.pretraining_corpus(seed=0, n=3000)
    text = " ".join(corpus)
    for marker in (
        "Please answer",
        "Please choose",
        "Answer format",
        "correct answer is",
        "answer is",
        "?",
        "Answer Choices",
    ):
        assert marker not in text, marker
    world = synthetic.build_world()
    assert f"the glim is made of {world.value('material', 'glim')}." in text
    assert re.search(r"\d+ \+ \d+ = \d+\.", text) and " plus " in text


def test_pretraining_corpus_covers_every_word_of_the_suites():
    text = " ".join(synthetic.pretraining_corpus(seed=0))
    train, tests = synthetic.make_suite("commonsense", n_train=200, n_test=10, seed=5)
    words = {w.strip(".,?:") for r in train for w in r["instruction"].replace("/", " ").split()}
    assert [w for w in words if w not in text] == []


def test_write_and_ensure_suite_layout(tmp_path):
    root = synthetic.write_suite("commonsense", tmp_path, n_train=40, n_test=4)
    assert root == tmp_path
    assert len(json.loads((tmp_path / "synthetic_commonsense.json").read_text())) == 40
    for name in synthetic.TEST_SETS["commonsense"]:
        assert len(json.loads((tmp_path / "dataset" / name / "test.json").read_text())) == 4
    synthetic.ensure_suite("math", tmp_path, n_train=30, n_test=3)
    assert (tmp_path / "synthetic_math.json").exists() and (
        tmp_path / "dataset" / "gsm8k" / "test.json"
    ).exists()

    # Same arguments: reused untouched; other sizes: regenerated.
    train_file = tmp_path / "synthetic_math.json"
    stamp = train_file.stat().st_mtime_ns
    synthetic.ensure_suite("math", tmp_path, n_train=30, n_test=3)
    assert train_file.stat().st_mtime_ns == stamp
    synthetic.ensure_suite("math", tmp_path, n_train=31, n_test=3)
    assert len(json.loads(train_file.read_text())) == 31


def test_default_generation_is_fast(tmp_path):
    t = time.perf_counter()
    synthetic.ensure_suite("commonsense", tmp_path)
    synthetic.ensure_suite("math", tmp_path)
    assert time.perf_counter() - t < 2.0
