"""Evaluation protocols: the string a test question is asked with, and how its answer is read and scored.

`fixed` (the default) is the authors' protocol (docs/protocol.md) with their defects fixed:
  prompt   the clean Alpaca template (perft_exp.data.prompts.build_prompt), with the record's input
  choice   the first label of the set's vocabulary in the lowercased response, compared case-blind
  number   thousands commas dropped ("1,000" -> 1000, but "3,4" stays two numbers), the last number
  AQuA     an option letter as a whole token (never the "E" of "Each"); the authors' rule is reported
           beside it
`authors` reproduces the authors' evaluate scripts (commonsense_evaluate.py, math_evaluate.py) exactly:
  prompt   their indented string, without the record's input
           (perft_exp.data.prompts.build_authors_test_prompt)
  choice   `re.findall(label1|label2|..., response.strip())[0]`, case-sensitive; correct iff
           `label == prediction`
  number   every comma removed, the last number `-?\\d+\\.?\\d*`; correct iff
           |float(label) - prediction| <= 0.001
  AQuA     the first capital A-E anywhere in the stripped response (inside words too); correct iff equal
Both take the response as the text after the last "### Response:" (the prefill "the correct answer is" is
part of it). Decoding (beams, new tokens, the attention mask the authors left out) is `eval.mode`'s, not this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from perft_exp.data.formats import canonical_test_set
from perft_exp.data.prompts import build_authors_test_prompt, build_prompt
from perft_exp.evaluation import extract

PROTOCOLS = ("fixed", "authors")

_AUTHORS_CHOICE = {name: re.compile("|".join(labels)) for name, labels in extract.CHOICE_LABELS.items()}


@dataclass(frozen=True)
class Protocol:
    """Prompt strings and answer matching: `fixed` (ours) or `authors` (their evaluation code's)."""

    name: str = "fixed"

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(
                f"eval.protocol={self.name!r} is not allowed; choose one of {', '.join(PROTOCOLS)}"
            )

    def prompt(self, record: dict, prefill: str = "") -> str:
        """The text the model continues; `prefill` ("the correct answer is" or "") ends it."""
        if self.name == "authors":
            return build_authors_test_prompt(record["instruction"], prefill)
        return build_prompt(record["instruction"], record.get("input", "")) + prefill

    def extract(self, dataset: str, response: str) -> str | float | None:
        """The prediction in a response: a label, a letter (AQuA), a number, or None."""
        if self.name == "fixed":
            return extract.extract_answer(dataset, response)
        name = canonical_test_set(dataset)
        text = response.strip()
        if name in _AUTHORS_CHOICE:
            match = _AUTHORS_CHOICE[name].search(text)
            return match.group(0) if match else None
        if name == "AQuA":
            return extract.extract_aqua_authors(text)
        numbers = re.findall(r"-?\d+\.?\d*", text.replace(",", ""))
        return float(numbers[-1]) if numbers else None

    def is_correct(self, dataset: str, prediction: str | float | None, label: str) -> bool:
        """Whether `prediction` matches `label` under this protocol's rules."""
        if self.name == "fixed":
            return extract.is_correct(dataset, prediction, label)
        if prediction is None:
            return False
        if isinstance(prediction, str):  # choice sets and AQuA: the exact string, case and all
            return prediction == label
        return abs(float(label.replace(",", "")) - prediction) <= 0.001


FIXED, AUTHORS = Protocol("fixed"), Protocol("authors")
