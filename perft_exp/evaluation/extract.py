"""Answer extraction and scoring, per the PERFT / LLM-Adapters evaluation protocol.

- Commonsense: the FIRST match of the dataset's label pattern in the lowercased response
  (e.g. BoolQ `true|false`), compared as a string.
- Math (numeric sets): thousands commas dropped, the LAST number `-?\\d+\\.?\\d*`, correct when
  within 0.001 of the label.
- AQuA: an option letter A-E by a robust rule (`extract_answer`) that never reads a capital inside
  a word; `extract_aqua_authors` is the authors' rule (the first capital A-E anywhere), kept so
  published numbers can be compared.
"""

from __future__ import annotations

import re

from perft_exp.data.formats import COMMONSENSE_TEST_SETS, canonical_test_set

# The label vocabulary of each commonsense set (what `answer` holds in the LLM-Adapters records).
CHOICE_LABELS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": tuple(f"answer{i}" for i in range(1, 6)),
    "hellaswag": tuple(f"ending{i}" for i in range(1, 5)),
    "winogrande": ("option1", "option2"),
    "ARC-Easy": tuple(f"answer{i}" for i in range(1, 6)),
    "ARC-Challenge": tuple(f"answer{i}" for i in range(1, 6)),
    "openbookqa": tuple(f"answer{i}" for i in range(1, 6)),
}
assert set(CHOICE_LABELS) == set(COMMONSENSE_TEST_SETS)

AQUA_LETTERS = ("A", "B", "C", "D", "E")

_CHOICE_PATTERNS = {name: re.compile("|".join(labels)) for name, labels in CHOICE_LABELS.items()}
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(r"-?\d+\.?\d*")

# AQuA, in order of preference; within a tier the last match wins, since a rationale states its
# conclusion at the end. A letter counts only as a whole token: never the "E" of "Each".
_AQUA_TIERS = (
    # "the answer is (C)", "Answer: C", "option c)", "the correct choice would be (d)"
    re.compile(
        r"(?i:answer|option|choice)\s*(?:(?i:is|would be|should be|must be|=)\s*)?:?\s*"
        r"(?:\(([A-Ea-e])\)|([A-E])(?![A-Za-z0-9']))"
    ),
    # "(C)" anywhere
    re.compile(r"\(([A-E])\)()"),
    # a bare capital followed by punctuation or the end: "C.", "so C", not the article "A train"
    re.compile(r"(?<![A-Za-z0-9'])([A-E])(?=\s*(?:[.,;:)\]!]|$))()"),
)
_AUTHORS_AQUA = re.compile(r"A|B|C|D|E")


def extract_aqua_authors(text: str) -> str | None:
    """The authors' AQuA rule: the first capital A-E anywhere, including inside words."""
    match = _AUTHORS_AQUA.search(text)
    return match.group(0) if match else None


def _extract_aqua(text: str) -> str | None:
    for tier in _AQUA_TIERS:
        matches = tier.findall(text)
        if matches:
            return "".join(matches[-1]).upper()
    return None


def extract_answer(dataset: str, text: str) -> str | float | None:
    """The prediction in a response: a label (commonsense), a letter (AQuA), a float (math) or None."""
    name = canonical_test_set(dataset)
    if name in CHOICE_LABELS:
        match = _CHOICE_PATTERNS[name].search(text.lower())
        return match.group(0) if match else None
    if name == "AQuA":
        return _extract_aqua(text)
    numbers = _NUMBER.findall(_THOUSANDS_COMMA.sub("", text))
    return float(numbers[-1]) if numbers else None


def is_correct(dataset: str, prediction: str | float | None, label: str) -> bool:
    """Numeric sets: |prediction - label| <= 0.001; choice sets (and AQuA): equal labels, case-blind."""
    if prediction is None:
        return False
    name = canonical_test_set(dataset)
    if name in CHOICE_LABELS or name == "AQuA":
        return str(prediction).strip().lower() == str(label).strip().lower()
    return abs(float(prediction) - float(str(label).replace(",", ""))) <= 0.001
