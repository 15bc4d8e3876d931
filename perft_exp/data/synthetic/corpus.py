"""The pre-training corpus of the tiny models: the world's facts in many forms, and Q/A about half of them.

Two findings of Allen-Zhu & Li ("Physics of Language Models 3.1", arXiv 2309.14316) shape it.
A fact seen in one sentence shape is stored tied to that shape and a question cannot read it
out; seen in many shapes and orders, it is stored with its subject. And a model that also
reads questions and answers about *some* subjects during pre-training learns to answer them
about the *other* subjects too. So every fact is stated in several templates, in single
statements and in profiles that list a subject's attributes in random order, and a share of
the documents are questions and answers (open, yes/no, multiple choice with numbered labels) about
the `train` facts only. The facts held out for the test suites appear only as statements:
a fine-tuned model can answer them only by reading out what pre-training stored.

A fifth of the documents are multiple-choice *exams* about train facts, laid out like the suites
(an instruction, numbered options, an "Answer format:" line, in the Alpaca template) but with
their own instructions and answer phrase: the web text a real model reads holds many such exams,
and without them a model this small learns to point from a recalled value to its option label
only slowly in fine-tuning (docs/miniature.md: the default's skill with and without them).
They teach the layout, not the answer: the shipped build answers its own exams at chance, also
about train facts (`exam_probes`; `exam_recall_*` in perft_build.json), so fine-tuning still learns
the step from a recalled value to its option's number.
None of it uses the suites' instructions or the "the correct answer is" response, so the
pre-trained model does not answer the suites (its skill before fine-tuning is below zero); word-list
documents cover the suites' vocabulary without their structure, so no suite token is untrained.

    from perft_exp.data.synthetic.corpus import pretraining_corpus
    docs = pretraining_corpus(seed=0, n=12000)
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from functools import cache

from perft_exp.data.prompts import build_prompt
from perft_exp.data.synthetic import arithmetic
from perft_exp.data.synthetic.commonsense import multiple_choice
from perft_exp.data.synthetic.templates import CHECKS, QUESTIONS, statement
from perft_exp.data.synthetic.world import RELATIONS, VALUES, World, build_world

# Label words of pre-training multiple choice: the suites' own and a few more.
LABEL_WORDS = ("answer", "option", "solution", "ending", "choice")
PICK_LEADS = ("answer:", "the right one is", "so the pick is")


class Bag:
    """Draws from a pool without replacement, refilling when empty: each pass uses every item once."""

    def __init__(self, pool: list, rng: random.Random) -> None:
        self.pool, self.rng, self.left = pool, rng, []

    def draw(self):
        """The next item of the current pass."""
        if not self.left:
            self.left = self.rng.sample(self.pool, len(self.pool))
        return self.left.pop()


def _random_value(relation: str, avoid: str, rng: random.Random) -> str:
    return rng.choice([v for v in VALUES[relation] if v != avoid])


def _labelled(options: list[str], rng: random.Random, sep: str | None = None) -> tuple[str, list[str]]:
    """Options under numbered labels ("Answer1: wood"), one a line or on one line; returns (text, labels)."""
    word = rng.choice(LABEL_WORDS)
    sep = sep or rng.choice(("\n", "\n\n", ", "))
    text = sep.join(f"{word.capitalize()}{i}: {opt}" for i, opt in enumerate(options, 1))
    return text, [f"{word}{i}" for i in range(1, len(options) + 1)]


# ---------------------------------------------------------------------------------------------
# Document generators: (world, rng, state) -> text. `state` holds the bags shared by a corpus.


def _statements_doc(world: World, rng: random.Random, state: dict) -> str:
    """A few facts (all of them, train and test), each in a random template."""
    facts = [state["facts"].draw() for _ in range(rng.randint(3, 6))]
    return " ".join(statement(r, s, v, rng) + "." for r, s, v in facts)


def _profile_doc(world: World, rng: random.Random, state: dict) -> str:
    """Everything about one subject, attributes in random order and templates."""
    subject = state["subjects"].draw()
    relations = [r for r in RELATIONS if r in world.attrs[subject]]
    rng.shuffle(relations)
    return " ".join(statement(r, subject, world.value(r, subject), rng) + "." for r in relations)


def _train_fact(world: World, rng: random.Random) -> tuple[str, str, str]:
    relation = rng.choice(RELATIONS)
    subject = rng.choice(world.subjects(relation, "train"))
    return relation, subject, world.value(relation, subject)


def _filler(relation: str, rng: random.Random) -> str:
    """Text between a question and its answer: the relation's values as labelled options, or words.

    An answer then has to be read from the question's subject across a distance, past candidate
    values, as in the suites' prompts; a model that reads only nearby tokens fails it.
    """
    if rng.random() < 0.6:
        return _labelled(list(VALUES[relation]), rng)[0]
    words, weights = suite_vocab()
    return " ".join(rng.choices(words, weights, k=rng.randint(3, 12)))


def _qa_open_doc(world: World, rng: random.Random, state: dict) -> str:
    """Open questions about train facts, each answered, most across some filler text."""
    out = []
    for _ in range(rng.randint(2, 4)):
        relation, subject, value = _train_fact(world, rng)
        questions, answer = QUESTIONS[relation]
        q = rng.choice(questions).format(s=subject)
        a = answer.format(v=value)
        gap = f"\n{_filler(relation, rng)}\n" if rng.random() < 0.9 else " "
        out.append(rng.choice((f"q: {q}{gap}a: {a}.", f"question: {q}{gap}answer: {a}.", f"{q}{gap}{a}.")))
    return "\n".join(out)


def _qa_check_doc(world: World, rng: random.Random, state: dict) -> str:
    """Yes/no and true/false questions about train facts, half of them stating a wrong value."""
    out = []
    for _ in range(rng.randint(2, 4)):
        relation, subject, value = _train_fact(world, rng)
        truth = rng.random() < 0.5
        shown = value if truth else _random_value(relation, value, rng)
        q = rng.choice(CHECKS[relation]).format(s=subject, v=shown)
        yes, no = rng.choice((("yes", "no"), ("true", "false"), ("right", "wrong")))
        out.append(f"{q} {yes if truth else no}.")
        if not truth and rng.random() < 0.5:
            out[-1] += " " + statement(relation, subject, value, rng) + "."
    return " ".join(out)


def _qa_choice_doc(world: World, rng: random.Random, state: dict) -> str:
    """A question about a train fact, the relation's values as labelled options (in their fixed
    order, as in the suites), answered with the right label, its value, or both."""
    relation, subject, value = _train_fact(world, rng)
    q = rng.choice(QUESTIONS[relation][0]).format(s=subject)
    listed, labels = _labelled(list(VALUES[relation]), rng)
    pick = labels[VALUES[relation].index(value)]
    answer = rng.choice((pick, pick, f"{pick}, {value}", value))
    return f"{q}\n{listed}\n{rng.choice(PICK_LEADS)} {answer}."


def _instruction_doc(world: World, rng: random.Random, state: dict) -> str:
    """A question about a train fact in the Alpaca template, half of them with the relation's values
    as labelled options, answered with the value: the template's layout and a read-out across its
    length, but none of the suites' instructions or answer phrasing."""
    relation, subject, value = _train_fact(world, rng)
    q = rng.choice(QUESTIONS[relation][0]).format(s=subject)
    if rng.random() < 0.5:
        q += "\n\n" + _labelled(list(VALUES[relation]), rng, sep="\n\n")[0]
    a = QUESTIONS[relation][1].format(v=value)
    return build_prompt(q) + rng.choice((a, statement(relation, subject, value, rng))) + "."


EXAM_LEADS = (
    "Pick the option that answers the question",
    "Select the right option for this question",
    "Which option is right? question",
)
EXAM_SAYS = ("the right option is", "my pick is", "the best option is")


def _exam_doc(world: World, rng: random.Random, state: dict) -> str:
    """A multiple-choice exam question about a train fact in the suites' layout (not their wording):
    the relation's values as numbered options in their fixed order, answered with the label."""
    relation, subject, value = _train_fact(world, rng)
    q = rng.choice(QUESTIONS[relation][0]).format(s=subject)
    word = rng.choice(LABEL_WORDS)
    options = list(VALUES[relation])
    exam = multiple_choice(rng.choice(EXAM_LEADS), q, word.capitalize(), options, options.index(value))
    return build_prompt(exam["instruction"]) + f"{rng.choice(EXAM_SAYS)} {exam['answer']}."


def _arithmetic_doc(world: World, rng: random.Random, state: dict) -> str:
    return " ".join(arithmetic.sentence(state["sums"].draw(), rng) for _ in range(rng.randint(3, 6)))


def _words_doc(world: World, rng: random.Random, state: dict) -> str:
    """A dictionary-style list of suite words, then the same list again (rewards copying)."""
    words, weights = suite_vocab()
    listed = ", ".join(rng.choices(words, weights, k=rng.randint(4, 10)))
    return f"words: {listed}. once more: {listed}."


DOCUMENTS: dict[str, Callable[[World, random.Random, dict], str]] = {
    "statements": _statements_doc,
    "profiles": _profile_doc,
    "qa_open": _qa_open_doc,
    "qa_check": _qa_check_doc,
    "qa_choice": _qa_choice_doc,
    "instructions": _instruction_doc,
    "arithmetic": _arithmetic_doc,
    "words": _words_doc,
    "exams": _exam_doc,
}
# Share of pre-training documents of each kind.
CORPUS_MIX = {
    "statements": 0.144,
    "profiles": 0.096,
    "qa_open": 0.24,
    "qa_check": 0.048,
    "qa_choice": 0.112,
    "instructions": 0.048,
    "arithmetic": 0.072,
    "words": 0.04,
    "exams": 0.20,
}
assert set(CORPUS_MIX) == set(DOCUMENTS)


@cache
def suite_vocab() -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Every word of the prompt template and the CORPUS_SUITES, weighted by count ** 0.75."""
    from perft_exp.data.synthetic.suite import CORPUS_SIZES, CORPUS_SUITES, make_suite

    text = [build_prompt("x", "y"), build_prompt("x")]
    for kind in CORPUS_SUITES:
        train, tests = make_suite(kind, *CORPUS_SIZES[kind], seed=0)
        text += [
            r["instruction"] + " " + r["output"] for r in train + [r for rs in tests.values() for r in rs]
        ]
    counts = Counter(w.strip(".,?:") for t in text for w in t.replace("/", " ").split())
    words = sorted(w for w in counts if w)
    return tuple(words), tuple(counts[w] ** 0.75 for w in words)


def pretraining_corpus(seed: int = 0, n: int = 12000) -> list[str]:
    """`n` plain-text documents mixed as in CORPUS_MIX; deterministic in (seed, n)."""
    rng = random.Random(seed)
    world = build_world()
    state = {
        "facts": Bag(world.facts(), rng),
        "subjects": Bag(sorted(world.attrs), rng),
        "sums": Bag(arithmetic.table(), rng),
    }
    kinds, weights = zip(*CORPUS_MIX.items())
    return [DOCUMENTS[kind](world, rng, state) for kind in rng.choices(kinds, weights, k=n)]


Probe = tuple[str, str, tuple[str, ...]]  # (prefix, correct value, the relation's values)


def _facts(world: World, split: str | None, relation: str | None) -> list[tuple[str, str, str]]:
    if relation is not None and relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    return [f for f in world.facts(split) if relation is None or f[0] == relation]


def fact_probes(split: str | None = None, relation: str | None = None) -> list[Probe]:
    """Each fact's (of one `relation`, or all) canonical statement cut before its
    value: what the model stored."""
    world = build_world()
    probes = []
    for rel, subject, value in _facts(world, split, relation):
        text = statement(rel, subject, value)
        probes.append((text[: text.rindex(value)].rstrip(), value, VALUES[rel]))
    return probes


def question_probes(split: str | None = None, relation: str | None = None) -> list[Probe]:
    """Each fact (of one `relation`, or all) asked in the pre-training Q/A form: what the model can read out.

    On `test` facts, which pre-training never asks about, this measures extractability.
    """
    world = build_world()
    probes = []
    for rel, subject, value in _facts(world, split, relation):
        questions, answer = QUESTIONS[rel]
        lead = answer.format(v=value)[: answer.format(v=value).rindex(value)].strip()
        prefix = f"q: {questions[0].format(s=subject)} a:" + (f" {lead}" if lead else "")
        probes.append((prefix, value, VALUES[rel]))
    return probes


def exam_probes(split: str | None = None, relation: str | None = None) -> list[Probe]:
    """Each fact asked as a pre-training exam (the suites' layout, the exams' wording), cut before the
    option's number ("... the right option is answer" -> "3"): whether the model maps what it
    recalls to the option's label, the step every suite needs. The values are the option numbers."""
    world = build_world()
    probes = []
    for rel, subject, value in _facts(world, split, relation):
        options = list(VALUES[rel])
        question = QUESTIONS[rel][0][0].format(s=subject)
        exam = multiple_choice(EXAM_LEADS[0], question, "Answer", options, options.index(value))
        prefix = build_prompt(exam["instruction"]) + f"{EXAM_SAYS[0]} answer"
        numbers = tuple(str(i) for i in range(1, len(options) + 1))
        probes.append((prefix, numbers[options.index(value)], numbers))
    return probes


def arithmetic_probes() -> list[tuple[str, int]]:
    """Each fact of the arithmetic table cut before its result ("7 + 5 =", 12): what the model stored."""
    return [(f"{x} {op} {y} =", z) for x, op, y, z in arithmetic.table()]
