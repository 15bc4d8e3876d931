"""The synthetic math suite: word problems whose unknown is a stored fact, one generator per test set.

A problem's one unknown is a held-out fact of an object (its weight, size or colour); a fixed
conversion of the miniature turns the fact into a number (a heavy thing needs 4 bags, a light one 2,
...; never stated in a problem, learnt from the training records, which use the train facts), and
the set's arithmetic combines it with numbers that are the same in every problem of the set. The
response states the fact first, then the conversion, then each arithmetic step:

    ann has 2 bags of food and then takes the glim. how many bags does ann carry now?
    -> heavy: a heavy thing needs 4 bags. 2 + 4 = 6. The answer is 6

So a fine-tuned model scores above the most common answer only by reading the fact out of the
frozen model, as in the commonsense suite; the arithmetic is learnt in fine-tuning. What this
miniature does not test is arithmetic on numbers taken from the problem's text: that needs
in-context copying, which the tiny model does not learn in its minutes of pre-training. The
arithmetic word problems in `arithmetic_problems` stay because the corpus draws its words from them.

The response states the fact first, as the pre-training's instruction documents answer, because the
fact is then read out better than after a lead-in ("it is a heavy thing, ..."). The measurements behind
both choices, and the designs that were dropped: docs/miniature.md, "Math".
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from perft_exp.data.formats import MATH_TEST_SETS
from perft_exp.data.synthetic import arithmetic
from perft_exp.data.synthetic.commonsense import Generator, Record
from perft_exp.data.synthetic.world import PEOPLE, World

# relation -> (value -> number, how the response states the fact and its conversion: {v}, {n})
RULES: dict[str, tuple[dict[str, int], str]] = {
    "weight": ({"heavy": 4, "light": 2}, "{v}: a {v} thing needs {n} bags."),
    "size": ({"big": 6, "small": 2}, "{v}: a {v} thing needs {n} boxes."),
    "color": ({"red": 2, "blue": 3, "green": 4, "yellow": 5}, "{v}: {v} needs {n} boxes of paint."),
}


@dataclass(frozen=True)
class MathSet:
    """A test set: the relations it reads (of one object), its problem ({p}, {q}: people; {o}: the
    object) and its arithmetic on the facts' numbers."""

    relations: tuple[str, ...]
    problem: str
    steps: Callable[[list[int]], list[arithmetic.Step]]


SETS: dict[str, MathSet] = {
    "AddSub": MathSet(
        ("weight",),
        "{p} has 2 bags of food and then takes the {o}. how many bags does {p} carry now?",
        lambda n: [(2, "+", n[0])],
    ),
    "MultiArith": MathSet(
        ("weight",),
        "{p} has 2 bags of food, takes the {o} and then gives 1 bag to {q}. "
        "how many bags does {p} carry now?",
        lambda n: [(2, "+", n[0]), (-1, "-", 1)],
    ),
    "SingleEq": MathSet(
        ("size",),
        "{p} had 9 boxes and used some for the {o}. how many boxes are left?",
        lambda n: [(9, "-", n[0])],
    ),
    "gsm8k": MathSet(
        ("weight", "size"),
        "{p} will move the {o}. how many bags and boxes does {p} need?",
        lambda n: [(n[0], "+", n[1])],
    ),
    "AQuA": MathSet(
        ("weight", "size"),
        "{p} takes the {o} on a trip. how many bags and boxes does {p} need?",
        lambda n: [(n[0], "+", n[1])],
    ),
    "SVAMP": MathSet(
        ("color",),
        "{p} has 1 box of paint and gets more paint for the {o}. how many boxes of paint does {p} have now?",
        lambda n: [(1, "+", n[0])],
    ),
}
AQUA_OPTIONS = (4, 6, 8, 10, 12)


def subjects(w: World, relations: tuple[str, ...], split: str) -> list[str]:
    """Objects whose facts of every one of `relations` belong to `split`."""
    others = [set(w.subjects(r, split)) for r in relations[1:]]
    return [s for s in w.subjects(relations[0], split) if all(s in o for o in others)]


def compute(steps: list[arithmetic.Step]) -> tuple[list[str], int]:
    """Each step as "x op y = z." and the result."""
    facts = arithmetic.chain(steps)
    return [arithmetic.equation(f) for f in facts], facts[-1][3]


def solve(name: str, w: World, rng: random.Random, split: str, index: int) -> tuple[str, str, int]:
    """(problem, worked solution without the final sentence, answer) about the index-th subject."""
    spec = SETS[name]
    candidates = subjects(w, spec.relations, split)
    subject = candidates[index % len(candidates)]
    said, numbers = [], []
    for relation in spec.relations:
        table, say = RULES[relation]
        value = w.value(relation, subject)
        numbers.append(table[value])
        said.append(say.format(v=value, n=table[value]))
    worked, answer = compute(spec.steps(numbers))
    p, q = rng.sample(PEOPLE, 2)
    return spec.problem.format(p=p, q=q, o=subject), " ".join(said + worked), answer


def _numeric(name: str) -> Generator:
    def generate(w: World, rng: random.Random, split: str, index: int) -> Record:
        text, worked, value = solve(name, w, rng, split, index)
        # The real sets mix "7" and "7.0" answers; keep both forms so extraction handles either.
        answer = f"{value}.0" if name in ("AddSub", "SingleEq", "MultiArith") else str(value)
        return {
            "instruction": text,
            "input": "",
            "output": f"{worked} The answer is {value}",
            "answer": answer,
        }

    generate.__name__ = name
    return generate


def aqua(w: World, rng: random.Random, split: str, index: int) -> Record:
    """An AQuA problem whose answer is one of AQUA_OPTIONS, given as its letter."""
    text, worked, value = solve("AQuA", w, rng, split, index)
    letter = "ABCDE"[AQUA_OPTIONS.index(value)]
    text += " Answer Choices: " + " ".join(f"({L}) {v}" for L, v in zip("ABCDE", AQUA_OPTIONS))
    return {"instruction": text, "input": "", "output": f"{worked} The answer is {letter}", "answer": letter}


# In the order of the real test sets (formats.MATH_TEST_SETS).
GENERATORS: dict[str, Generator] = {
    name: aqua if name == "AQuA" else _numeric(name) for name in MATH_TEST_SETS
}
assert set(GENERATORS) == set(SETS)
