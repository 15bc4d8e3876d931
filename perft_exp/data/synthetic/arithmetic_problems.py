"""Arithmetic word problems about the world's people and objects, one generator per math test set.

No task uses them: the pre-training corpus and the tokenizer draw their words from them
(`suite.CORPUS_SUITES`), and the math suite asks for stored facts instead (`math`), because the tiny
model does not copy a problem's numbers (docs/miniature.md, "Math"). `make_suite("arithmetic", ...)`
still generates them, in memory.

Every step of a problem is arithmetic the tiny model was pre-trained on (`arithmetic.known`):
numbers are rejection-sampled until the whole chain is. A generator has the commonsense
signature `(world, rng, split, position) -> record`; `split` does not apply (the arithmetic
table is shared knowledge) and `position` places AQuA's correct letter, so its gold labels
are balanced.
"""

from __future__ import annotations

import random

from perft_exp.data.synthetic import arithmetic
from perft_exp.data.synthetic.commonsense import Generator, Record
from perft_exp.data.synthetic.world import OBJECTS, PEOPLE, World


def solve(steps: list[arithmetic.Step]) -> list[arithmetic.Fact] | None:
    """The chain of facts computing `steps`, or None if a step is outside the pre-training table."""
    facts = arithmetic.chain(steps)
    return facts if all(arithmetic.known(op, x, y) for x, op, y, _ in facts) else None


def rationale(chain: list[arithmetic.Fact], answer: str) -> str:
    """The worked answer: the chain's equations, then `The answer is <answer>`."""
    return " ".join(map(arithmetic.equation, chain)) + f" The answer is {answer}"


def _problem(name: str, rng: random.Random) -> tuple[str, list[arithmetic.Fact]]:
    p, q = rng.sample(PEOPLE, 2)
    o, o2 = rng.sample(OBJECTS, 2)
    while True:
        a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 20)
        m, n = rng.randint(2, 9), rng.randint(2, 9)
        first = rng.random() < 0.5
        if name == "AddSub":
            text, steps = (
                (
                    f"{p} had {a} {o}s. {q} gave {p} {b} more {o}s. how many {o}s does {p} have now?",
                    [(a, "+", b)],
                )
                if first
                else (
                    f"{p} had {a} {o}s and gave {b} of them to {q}. how many {o}s does {p} have left?",
                    [(a, "-", b)],
                )
            )
        elif name == "SingleEq":
            text, steps = (
                (
                    f"{p} bought some {o}s. {p} had {a} {o}s before and has {b} now. "
                    f"how many {o}s did {p} buy?",
                    [(b, "-", a)],
                )
                if first
                else (
                    f"{p} has {a} {o}s and {q} has {b} {o}s. how many {o}s do they have together?",
                    [(a, "+", b)],
                )
            )
        elif name == "MultiArith":
            text, steps = (
                (
                    f"{p} had {a} {o}s and found {b} more. then {p} lost {c} of them. "
                    f"how many {o}s are left?",
                    [(a, "+", b), (-1, "-", c)],
                )
                if first
                else (
                    f"there are {m} boxes with {n} {o}s in each box. how many {o}s are there?",
                    [(m, "*", n)],
                )
            )
        elif name == "gsm8k":
            text, steps = (
                (
                    f"{p} has {m} bags with {n} {o}s in each bag. {p} gives {c} {o}s to {q}. "
                    f"how many {o}s does {p} have left?",
                    [(m, "*", n), (-1, "-", c)],
                )
                if first
                else (
                    f"{p} makes {m} {o}s every day for {n} days, then buys {c} more. "
                    f"how many {o}s does {p} have?",
                    [(m, "*", n), (-1, "+", c)],
                )
            )
        elif name == "SVAMP":
            text, steps = (
                (
                    f"{p} gave {b} {o}s to {q} and now has {a} {o}s left. "
                    f"how many {o}s did {p} have at first?",
                    [(a, "+", b)],
                )
                if first
                else (
                    f"{p} has {a} {o}s and {c} {o2}s. {p} gets {b} more {o}s. how many {o}s does {p} have?",
                    [(a, "+", b)],
                )
            )
        else:  # AQuA
            text, steps = (
                f"{p} has {m} boxes with {n} {o}s in each box. how many {o}s does {p} have?",
                [(m, "*", n)],
            )
        chain = solve(steps)
        if chain is not None:
            return text, chain


def _numeric(name: str) -> Generator:
    def generate(w: World, rng: random.Random, split: str, position: int) -> Record:
        text, chain = _problem(name, rng)
        value = chain[-1][3]
        # The real sets mix "7" and "7.0" answers; keep both forms so extraction handles either.
        answer = f"{value}.0" if name in ("AddSub", "SingleEq", "MultiArith") else str(value)
        return {"instruction": text, "input": "", "output": rationale(chain, str(value)), "answer": answer}

    generate.__name__ = name
    return generate


def aqua(w: World, rng: random.Random, split: str, position: int) -> Record:
    """An AQuA-style problem with five sorted options (A-E), the answer at `position % 5` where it can be."""
    text, chain = _problem("AQuA", rng)
    value = chain[-1][3]
    others = sorted(rng.sample([value + d for d in range(-6, 7) if d and value + d > 0], 4))
    # Keep the options sorted, as AQuA's usually are, and still put the answer at `position`:
    # shift the distractors so that `index` of them lie below the answer (fewer if the
    # answer is too small to have that many positive numbers below it).
    index = position % 5
    below = [v for v in others if v < value]
    above = [v for v in others if v > value]
    while len(below) > index:
        below.pop(0)
        above.append(max([value, *above]) + 1)
    while len(below) < index and min([value, *below]) - 1 > 0:
        above.pop()
        below.insert(0, min([value, *below]) - 1)
    options = sorted(below + [value] + above)
    letter = "ABCDE"[options.index(value)]
    text += " Answer Choices: " + " ".join(f"({L}) {v}" for L, v in zip("ABCDE", options))
    return {"instruction": text, "input": "", "output": rationale(chain, letter), "answer": letter}


GENERATORS: dict[str, Generator] = {
    "AddSub": _numeric("AddSub"),
    "MultiArith": _numeric("MultiArith"),
    "SingleEq": _numeric("SingleEq"),
    "gsm8k": _numeric("gsm8k"),
    "AQuA": aqua,
    "SVAMP": _numeric("SVAMP"),
}
