"""Evaluation protocols: the authors' exact strings and matching beside the default fixed protocol."""

import pytest
import torch

from perft_exp.config import ConfigError, EvalProtocol, Prompt, compose, validate
from perft_exp.data.collate import tokenize_record
from perft_exp.data.prompts import COMMONSENSE_PREFILL, PROMPTS, build_training_prompt
from perft_exp.evaluation import evaluate
from perft_exp.evaluation.protocol import PROTOCOLS, Protocol

FIXED, AUTHORS = Protocol("fixed"), Protocol("authors")
I16 = " " * 16
# Typed off the authors' f-strings (commonsense_evaluate.py / math_evaluate.py / finetune.py),
# indentation kept.
AUTHORS_COMMONSENSE_TEST = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request. \n"
    f"\n{I16}### Instruction:\n{I16}Q?\n\n{I16}### Response:\n{I16}the correct answer is"
)
AUTHORS_MATH_TEST = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request. \n"
    f"\n{I16}### Instruction:\n{I16}Q?\n\n{I16}### Response:\n{I16}"
)
AUTHORS_TRAIN = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.  \n"
    f"\n{I16}### Instruction:\n{I16}Q?\n{I16}\n{I16}### Response:\n{I16}"
)
AUTHORS_TRAIN_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n"
    f"{I16}### Instruction:\n{I16}Q?\n{I16}\n{I16}### Input:\n"
    f"{I16}ctx\n{I16}\n{I16}### Response:\n{I16}"
)


def test_the_protocol_names_agree():
    assert tuple(EvalProtocol) == PROTOCOLS and tuple(Prompt) == PROMPTS == ("clean", "authors")


def test_authors_prompts_are_their_strings_byte_for_byte():
    record = {"instruction": "Q?", "input": "ctx"}  # their evaluate() never passed the input
    assert AUTHORS.prompt(record, COMMONSENSE_PREFILL) == AUTHORS_COMMONSENSE_TEST
    assert AUTHORS.prompt(record) == AUTHORS_MATH_TEST
    assert build_training_prompt("Q?", "", "authors") == AUTHORS_TRAIN
    assert build_training_prompt("Q?", "ctx", "authors") == AUTHORS_TRAIN_INPUT
    assert FIXED.prompt(record, COMMONSENSE_PREFILL).endswith(
        "### Input:\nctx\n\n### Response:\nthe correct answer is"
    )


def test_authors_training_text_is_tokenized_from_their_template(tiny_tokenizer):
    record = {"instruction": "Q?", "input": "", "output": "the correct answer is true", "answer": "true"}
    ids = tokenize_record(tiny_tokenizer, record, cutoff_len=512, prompt="authors")["input_ids"]
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == AUTHORS_TRAIN + record["output"]


@pytest.mark.parametrize(
    ("dataset", "response", "label", "fixed", "authors"),
    [
        # case-sensitive label search and comparison
        ("boolq", "the correct answer is True", "true", ("true", True), (None, False)),
        ("boolq", "the correct answer is true", "True", ("true", True), ("true", False)),
        ("piqa", "the correct answer is solution2", "solution2", ("solution2", True), ("solution2", True)),
        # every comma removed, not only thousands separators
        ("gsm8k", "the answer is 1,000", "1000", (1000.0, True), (1000.0, True)),
        ("gsm8k", "the answer is 12,5", "5", (5.0, True), (125.0, False)),
        ("gsm8k", "so 3,4", "4", (4.0, True), (34.0, False)),
        # AQuA: the first capital A-E anywhere, inside words too
        ("AQuA", "Each train ... the answer is (B)", "B", ("B", True), ("E", False)),
        ("AQuA", "the answer is C", "C", ("C", True), ("C", True)),
    ],
)
def test_matching(dataset, response, label, fixed, authors):
    for protocol, (extracted, correct) in ((FIXED, fixed), (AUTHORS, authors)):
        got = protocol.extract(dataset, response)
        assert (got, protocol.is_correct(dataset, got, label)) == (extracted, correct), protocol.name


def test_evaluate_asks_with_the_authors_strings(tiny_lm, tiny_tokenizer, tmp_path):
    torch.set_num_threads(1)
    sets = {
        "boolq": [{"instruction": "Q?", "input": "", "answer": "true"}],
        "gsm8k": [{"instruction": "Q?", "input": "", "answer": "2"}],
    }
    result = evaluate(
        tiny_lm,
        tiny_tokenizer,
        sets,
        mode="greedy",
        max_new_tokens=2,
        out_dir=tmp_path,
        progress=False,
        protocol="authors",
    )
    import json

    rows = {n: json.loads((tmp_path / f"{n}.jsonl").read_text()) for n in sets}
    assert rows["boolq"]["prompt"] == AUTHORS_COMMONSENSE_TEST
    assert rows["gsm8k"]["prompt"] == AUTHORS_MATH_TEST
    # the prefill is part of their response
    assert rows["boolq"]["response"].startswith("the correct answer is")
    assert 0.0 <= result["average"] <= 1.0


def test_bad_protocol_or_prompt_is_one_line_naming_the_key():
    for override, key in (("eval.protocol=theirs", "eval.protocol"), ("task.prompt=indented", "task.prompt")):
        with pytest.raises(ConfigError, match=f"^{key}="):
            validate(compose([override]))
