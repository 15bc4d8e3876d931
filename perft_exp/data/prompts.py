"""The Alpaca-style prompt template used by LLM-Adapters and the PERFT authors,
clean and as the authors ran it.

The authors wrote their templates as indented triple-quoted f-strings, so the source indentation (16 spaces)
leaked into every line after the first, and the first line ends in stray spaces. `build_prompt` is the clean
template (the default); `PROMPTS = ("clean", "authors")` names the two, and the authors' strings are
reproduced byte for byte (their finetune.py for training, their *_evaluate.py for testing) so that published
numbers can be compared like for like (`task.prompt=authors`, `eval.protocol=authors`). Their training and
test strings differ from each other too: training puts 16 spaces on the blank lines and two spaces after
"request." (one with an input); testing leaves the blank lines empty, puts one space after "request." and
never passes the record's input (their evaluate() is called with the instruction only).
A clean prompt ends right after "### Response:\n"; the training target is the record's `output`.
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

PROMPTS = ("clean", "authors")
_INDENT = " " * 16
_AUTHORS_TRAIN_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
    f"{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n{_INDENT}\n"
    f"{_INDENT}### Input:\n{_INDENT}{{input}}\n{_INDENT}\n"
    f"{_INDENT}### Response:\n{_INDENT}"
)
_AUTHORS_TRAIN_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.  \n\n"
    f"{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n{_INDENT}\n"
    f"{_INDENT}### Response:\n{_INDENT}"
)
_AUTHORS_TEST = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request. \n\n"
    f"{_INDENT}### Instruction:\n{_INDENT}{{instruction}}\n\n"
    f"{_INDENT}### Response:\n{_INDENT}"
)

# Generation-time prefill for the commonsense sets (the authors' protocol).
COMMONSENSE_PREFILL = "the correct answer is"


def build_prompt(instruction: str, input: str = "") -> str:
    """The prompt up to and including "### Response:\\n"."""
    if input:
        return _WITH_INPUT.format(instruction=instruction, input=input)
    return _NO_INPUT.format(instruction=instruction)


def build_training_prompt(instruction: str, input: str = "", prompt: str = "clean") -> str:
    """The part of a training text before the record's `output`: the clean template or the authors' string."""
    if prompt == "clean":
        return build_prompt(instruction, input)
    if prompt != "authors":
        raise ValueError(f"prompt={prompt!r}; choose one of {', '.join(PROMPTS)}")
    template = _AUTHORS_TRAIN_WITH_INPUT if input else _AUTHORS_TRAIN_NO_INPUT
    return template.format(instruction=instruction, input=input)


def build_authors_test_prompt(instruction: str, prefill: str = "") -> str:
    """The authors' evaluation prompt (input never passed); commonsense ends
    "...### Response:\\n<16 spaces>the correct answer is", math with the 16 spaces."""
    return _AUTHORS_TEST.format(instruction=instruction) + prefill


def response_of(text: str) -> str:
    """The text after the last "### Response:" marker (the whole text if there is none)."""
    return text.rsplit(RESPONSE_MARKER, 1)[-1].strip()
