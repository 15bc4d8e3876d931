"""The synthetic world and suites: deterministic, in the LLM-Adapters formats, held-out facts kept apart."""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest

from perft_exp.data import synthetic
from perft_exp.data.synthetic import commonsense, corpus
from perft_exp.data.synthetic.templates import CHECKS, QUESTIONS, STATEMENTS
from perft_exp.data.synthetic.world import OBJECTS, PEOPLE, RELATIONS, VALUES
from perft_exp.evaluation.extract import CHOICE_LABELS

# Which relation each multiple-choice set asks about (boolq asks weight or size).
SET_RELATIONS = commonsense.ASKS
NAMES = re.compile(r"\b(" + "|".join(OBJECTS + PEOPLE) + r")\b")


@pytest.fixture(scope="module")
def commonsense_suite():
    return synthetic.make_suite("commonsense", n_train=400, n_test=40, seed=0)


@pytest.fixture(scope="module")
def math_suite():
    return synthetic.make_suite("math", n_train=300, n_test=30, seed=0)


@pytest.fixture(scope="module")
def corpus_text():
    return "\n".join(synthetic.pretraining_corpus(seed=0))


def test_deterministic_in_seed_and_sizes():
    assert synthetic.make_suite("commonsense", 80, 5, seed=3) == synthetic.make_suite(
        "commonsense", 80, 5, seed=3
    )
    assert synthetic.make_suite("math", 60, 5, seed=3) == synthetic.make_suite("math", 60, 5, seed=3)
    assert synthetic.make_suite("commonsense", 80, 5, seed=3) != synthetic.make_suite(
        "commonsense", 80, 5, seed=4
    )
    assert synthetic.pretraining_corpus(seed=1, n=50) == synthetic.pretraining_corpus(seed=1, n=50)


def test_generators_come_from_one_table_per_kind():
    assert tuple(synthetic.GENERATORS["commonsense"]) == synthetic.TEST_SETS["commonsense"]
    assert tuple(synthetic.GENERATORS["math"]) == synthetic.TEST_SETS["math"]
    assert set(corpus.CORPUS_MIX) == set(corpus.DOCUMENTS)


def test_commonsense_records_follow_the_llm_adapters_format(commonsense_suite):
    train, tests = commonsense_suite
    assert list(tests) == list(synthetic.TEST_SETS["commonsense"])
    for name, records in tests.items():
        assert len(records) == 40
        for r in records:
            assert set(r) == {"instruction", "input", "output", "answer"} and r["input"] == ""
            assert r["output"] == f"the correct answer is {r['answer']}"
            offered = r["instruction"].rsplit("Answer format: ", 1)[1].split("/")
            assert r["answer"] in offered and set(offered) <= set(CHOICE_LABELS[name])
    assert tests["boolq"][0]["instruction"].startswith(
        "Please answer the following question with true or false"
    )
    assert "\n\nSolution1: " in tests["piqa"][0]["instruction"]
    formats = {r["instruction"].rsplit("Answer format: ", 1)[1] for r in train}
    assert {f.split("/")[0] for f in formats} == {"true", "solution1", "answer1", "ending1", "option1"}


def _subject(record: dict, relation: str = "material") -> str:
    """The name a question asks about: the object in it (people only for people's relations)."""
    names = NAMES.findall(record["instruction"].split("\n\n")[0].split(": ", 1)[1])
    pool = PEOPLE if relation in ("hobby", "pet") else OBJECTS
    return next((n for n in names if n in pool), "")


def test_options_are_the_relations_values_in_fixed_order_and_the_label_is_the_fact(commonsense_suite):
    world = synthetic.build_world()
    train, tests = commonsense_suite
    for name, records in tests.items():
        if name == "boolq":
            continue
        for r in records:
            options = re.findall(r"\n\n[A-Z][a-z]+\d: ([^\n]+)", r["instruction"])
            relation = (
                next(
                    rel
                    for rel in SET_RELATIONS[name]
                    if len(VALUES[rel]) == len(options) and all(v in o for v, o in zip(VALUES[rel], options))
                )
                if name != "piqa"
                else "weight"
            )
            subject = _subject(r, relation)
            label_index = int(r["answer"][-1]) - 1
            assert VALUES[relation][label_index] == world.value(relation, subject), (name, r)


def test_gold_labels_are_balanced(commonsense_suite):
    """The best constant answer scores about chance: the world deals each relation's values evenly."""
    _, tests = commonsense_suite
    for name, records in tests.items():
        counts = Counter(r["answer"] for r in records)
        n_options = len(records[0]["instruction"].rsplit("Answer format: ", 1)[1].split("/"))
        assert max(counts.values()) / len(records) <= 1 / n_options + 0.1, (name, counts)


def test_test_questions_ask_only_about_held_out_facts(commonsense_suite):
    world = synthetic.build_world()
    for relation in RELATIONS:
        train_s, test_s = world.subjects(relation, "train"), world.subjects(relation, "test")
        assert set(train_s).isdisjoint(test_s) and abs(len(test_s) - len(train_s)) <= 2
    train, tests = commonsense_suite
    for name, records in tests.items():
        for r in records:
            relations = [
                rel for rel in SET_RELATIONS[name] if _subject(r, rel) in world.subjects(rel, "test")
            ]
            assert relations, (name, r)  # the set's relation, asked about a held-out subject
    asked = {_subject(r) for r in tests["ARC-Easy"]}
    assert asked == set(world.subjects("material", "test"))  # every held-out fact asked
    assert {_subject(r) for r in train if "made of" in r["instruction"]} <= set(
        world.subjects("material", "train")
    )


@pytest.mark.parametrize("kind", ["commonsense", "math"])
def test_train_and_test_questions_are_distinct(kind, commonsense_suite, math_suite):
    train, tests = commonsense_suite if kind == "commonsense" else math_suite
    test_q = [r["instruction"] for records in tests.values() for r in records]
    assert len(set(test_q)) == len(test_q)
    assert {r["instruction"] for r in train}.isdisjoint(test_q)


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
    for r in train + [r for records in tests.values() for r in records]:  # the arithmetic is right
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", r["output"])
        assert steps and all(eval(f"{x} {op} {y}") == int(z) for x, op, y, z in steps), r["output"]
    letters = Counter(r["answer"] for r in tests["AQuA"])
    assert max(letters.values()) <= 0.35 * len(tests["AQuA"]), letters


def test_math_answers_follow_from_the_asked_objects_facts(math_suite):
    """A problem's unknown is its object's fact: held out for test problems, train for training
    records; the response states it first and the answer is the set's arithmetic on its number."""
    from perft_exp.data.synthetic import math

    world = synthetic.build_world()
    train, tests = math_suite
    by_set = {name: [(r, "test") for r in records] for name, records in tests.items()}
    for r in train:
        name = next(n for n, spec in math.SETS.items() if _matches(spec.problem, r["instruction"]))
        by_set[name].append((r, "train"))
    for name, records in by_set.items():
        spec = math.SETS[name]
        assert {split for _, split in records} == {"train", "test"}, name
        for r, split in records:
            (subject,) = [s for s in NAMES.findall(r["instruction"]) if s in OBJECTS]
            values = [world.value(rel, subject) for rel in spec.relations]
            assert all(subject in world.subjects(rel, split) for rel in spec.relations), (name, subject)
            assert r["output"].startswith(f"{values[0]}: "), r["output"]
            numbers = [math.RULES[rel][0][v] for rel, v in zip(spec.relations, values)]
            _, answer = math.compute(spec.steps(numbers))
            expected = "ABCDE"[math.AQUA_OPTIONS.index(answer)] if name == "AQuA" else str(answer)
            assert r["answer"].removesuffix(".0") == expected, (name, r)


def _matches(template: str, text: str) -> bool:
    pattern = (
        re.escape(template).replace(r"\{p\}", r"\w+").replace(r"\{q\}", r"\w+").replace(r"\{o\}", r"\w+")
    )
    return re.match(pattern, text) is not None


def test_a_constant_answer_has_no_math_skill(math_suite):
    """Each set's most common answer is well below certainty: knowing the facts is worth points."""
    _, tests = math_suite
    for name, records in tests.items():
        top = Counter(r["answer"] for r in records).most_common(1)[0][1]
        assert top <= 0.55 * len(records), name


def test_the_arithmetic_suite_is_unchanged_for_the_corpus():
    """The corpus and tokenizer read the arithmetic problems (CORPUS_SUITES) as they were at corpus
    version 5: still seeded under the math suite's name, still arithmetic on numbers in the problem."""
    train, tests = synthetic.make_suite("arithmetic", n_train=30, n_test=3, seed=0)
    assert list(tests) == list(synthetic.TEST_SETS["math"]) and len(train) == 30
    assert all(re.search(r"\d", r["instruction"]) for r in train)
    assert set(synthetic.CORPUS_SUITES) == {"commonsense", "arithmetic"}


def test_pretraining_corpus_states_every_fact_in_several_forms(corpus_text):
    world = synthetic.build_world()
    for relation, subject, value in world.facts():
        forms = [t.format(s=subject, v=value) for t in STATEMENTS[relation]]
        assert sum(f in corpus_text for f in forms) >= 3, (relation, subject)


def test_pretraining_corpus_asks_only_about_train_facts(corpus_text):
    """Questions about held-out facts never occur in pre-training; about train facts they do."""
    world = synthetic.build_world()
    for split in ("train", "test"):
        asked = 0
        for relation, subject, _ in world.facts(split):
            questions = [q.format(s=subject) for q in QUESTIONS[relation][0]]
            questions += [c.format(s=subject, v=v) for c in CHECKS[relation] for v in VALUES[relation]]
            asked += any(q in corpus_text for q in questions)
        n = len(world.facts(split))
        assert asked == 0 if split == "test" else asked > 0.9 * n, (split, asked, n)


def test_pretraining_corpus_has_no_suite_instructions(corpus_text):
    # Whole phrases: word lists may put two suite words side by side by chance.
    for marker in (
        "Please answer the following",
        "Please choose the correct",
        "the correct answer is",
        "Answer Choices:",
    ):
        assert marker not in corpus_text, marker
    # The exams share the suites' layout (numbered options, an "Answer format:" line), not their wording.
    assert "Answer format:" in corpus_text and "the right option is" in corpus_text
    assert re.search(r"\d+ \+ \d+ = \d+\.", corpus_text) and " plus " in corpus_text


@pytest.mark.parametrize("kind", ["commonsense", "math"])
def test_pretraining_corpus_covers_every_word_of_the_suites(kind, corpus_text):
    """A suite uses only words the corpus has (the corpus does not follow a suite's rewording)."""
    train, tests = synthetic.make_suite(kind, n_train=200, n_test=10, seed=5)
    records = train + [r for rs in tests.values() for r in rs]
    words = {
        w.strip(".,?:()")
        for r in records
        for w in (r["instruction"] + " " + r["output"]).replace("/", " ").split()
    }
    assert [w for w in words if w and w not in corpus_text] == []


def test_probes_cover_every_fact():
    world = synthetic.build_world()
    for probes in (synthetic.fact_probes(), synthetic.question_probes()):
        assert len(probes) == len(world.facts())
        assert all(value in values for _, value, values in probes)
    assert len(synthetic.question_probes("test")) == len(world.facts("test"))
    # One relation's probes: its facts only; together the relations' probes are all of them.
    for make in (synthetic.fact_probes, synthetic.question_probes):
        by_relation = {r: make("test", r) for r in RELATIONS}
        assert all(len(by_relation[r]) == len(world.subjects(r, "test")) for r in RELATIONS)
        assert all(values == VALUES[r] for r, probes in by_relation.items() for _, _, values in probes)
        assert sorted(p for ps in by_relation.values() for p in ps) == sorted(make("test"))
    # Exam probes: the pre-training exam layout cut before the option's number, which is the value's place.
    for (relation, subject, value), (prefix, number, numbers) in zip(
        world.facts("test"), synthetic.exam_probes("test")
    ):
        assert prefix.endswith("### Response:\nthe right option is answer") and re.search(
            rf"\b{subject}\b", prefix
        )
        assert re.search(rf"Answer{number}: (.+)\n", prefix).group(1) == value
        assert len(numbers) == len(VALUES[relation])
    with pytest.raises(ValueError, match="unknown relation"):
        synthetic.fact_probes("test", "colour")
    arithmetic_probes = synthetic.arithmetic_probes()
    assert len(arithmetic_probes) == len(set(arithmetic_probes)) > 500
    assert all(eval(prefix.removesuffix("=")) == result for prefix, result in arithmetic_probes)


def test_commonsense_generator_signature():
    world = synthetic.build_world()
    import random

    for name, generate in commonsense.GENERATORS.items():
        rec = generate(world, random.Random(0), "test", 3)
        assert set(rec) == {"instruction", "input", "output", "answer"}, name


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


def test_asking_for_more_distinct_questions_than_the_world_has_is_an_error():
    with pytest.raises(ValueError, match="distinct"):
        synthetic.make_suite("commonsense", n_train=8, n_test=1000, seed=0)


def test_default_generation_is_fast(tmp_path):
    t = time.perf_counter()
    synthetic.ensure_suite("commonsense", tmp_path)
    synthetic.ensure_suite("math", tmp_path)
    assert time.perf_counter() - t < 2.0
