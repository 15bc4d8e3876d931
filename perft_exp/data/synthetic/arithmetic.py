"""The arithmetic the tiny models are pre-trained on, and the words for numbers.

Sums and differences of numbers up to ADD_MAX and products up to MUL_MAX x MUL_MAX, written as
"3 + 4 = 7." or "three plus four is seven."; the arithmetic word problems (`arithmetic_problems`) use
only these steps. `chain` and `equation` compute and write a problem's steps for both math suites.
"""

from __future__ import annotations

import random

ADD_MAX, MUL_MAX = 20, 10
Fact = tuple[int, str, int, int]  # (x, op, y, result)
Step = tuple[int, str, int]  # (x, op, y); x = -1 takes the previous step's result

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}


def number_word(n: int) -> str:
    """English words for 0 <= n <= 100 ("forty two")."""
    if n == 100:
        return "one hundred"
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def chain(steps: list[Step]) -> list[Fact]:
    """The facts computing `steps` in turn."""
    out, prev = [], 0
    for x, op, y in steps:
        x = prev if x == -1 else x
        prev = x + y if op == "+" else x - y if op == "-" else x * y
        out.append((x, op, y, prev))
    return out


def equation(fact: Fact) -> str:
    """`x op y = z.`"""
    x, op, y, z = fact
    return f"{x} {op} {y} = {z}."


def known(op: str, x: int, y: int) -> bool:
    """Whether `x op y` is in the pre-training table."""
    if op == "+":
        return 0 <= x <= ADD_MAX and 0 <= y <= ADD_MAX
    if op == "-":
        return 0 <= y <= ADD_MAX and 0 <= x - y <= ADD_MAX
    return 1 <= x <= MUL_MAX and 1 <= y <= MUL_MAX


def table() -> list[Fact]:
    """Every fact of the pre-training table."""
    facts: list[Fact] = []
    for x in range(ADD_MAX + 1):
        for y in range(ADD_MAX + 1):
            facts += [(x, "+", y, x + y), (x + y, "-", y, x)]
    facts += [(x, "*", y, x * y) for x in range(1, MUL_MAX + 1) for y in range(1, MUL_MAX + 1)]
    return facts


def sentence(fact: Fact, rng: random.Random) -> str:
    """A fact as an equation (7 times in 10) or in words (`two plus three is five.`)."""
    x, op, y, z = fact
    if rng.random() < 0.7:
        return equation(fact)
    return f"{number_word(x)} {_OP_WORDS[op]} {number_word(y)} is {number_word(z)}."
