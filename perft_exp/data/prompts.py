"""The Alpaca-style prompt template used by LLM-Adapters and the PERFT authors.

The authors' scripts leaked source indentation into the prompt; this is the clean template.
A prompt ends right after "### Response:\n"; the training target is the record's `output`.
"""

from __future__ import annotations

RESPONSE_MARKER = "### Response:"

_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

# Generation-time prefill for the commonsense sets (the authors' protocol).
COMMONSENSE_PREFILL = "the correct answer is"


def build_prompt(instruction: str, input: str = "") -> str:
    """The prompt up to and including "### Response:\\n"."""
    if input:
        return _WITH_INPUT.format(instruction=instruction, input=input)
    return _NO_INPUT.format(instruction=instruction)


def response_of(text: str) -> str:
    """The text after the last "### Response:" marker (the whole text if there is none)."""
    return text.rsplit(RESPONSE_MARKER, 1)[-1].strip()
