"""Tokenization for causal-LM training: the EOS rule, truncation, prompt masking, padding."""

import torch

from perft_exp.data.collate import IGNORE_INDEX, CausalLMCollator, tokenize_dataset, tokenize_record
from perft_exp.data.prompts import build_prompt

RECORD = {"instruction": "What is 2 + 2?", "input": "", "output": "2 + 2 = 4. The answer is 4", "answer": "4"}


def _n_tokens(tokenizer, record) -> int:
    return len(
        tokenizer(build_prompt(record["instruction"], record["input"]) + record["output"])["input_ids"]
    )


def test_eos_appended_when_there_is_room(tiny_tokenizer):
    n = _n_tokens(tiny_tokenizer, RECORD)
    example = tokenize_record(tiny_tokenizer, RECORD, cutoff_len=n + 1)
    assert len(example["input_ids"]) == n + 1
    assert example["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert example["labels"] == example["input_ids"]
    assert example["attention_mask"] == [1] * (n + 1)
    assert not example["truncated"]


def test_no_eos_when_text_fills_the_cutoff(tiny_tokenizer):
    n = _n_tokens(tiny_tokenizer, RECORD)
    exact = tokenize_record(tiny_tokenizer, RECORD, cutoff_len=n)
    assert len(exact["input_ids"]) == n and exact["input_ids"][-1] != tiny_tokenizer.eos_token_id
    assert not exact["truncated"]
    cut = tokenize_record(tiny_tokenizer, RECORD, cutoff_len=n - 5)
    assert len(cut["input_ids"]) == n - 5 and cut["input_ids"][-1] != tiny_tokenizer.eos_token_id
    assert cut["truncated"]
    assert (
        tokenize_record(tiny_tokenizer, RECORD, cutoff_len=n + 1, add_eos=False)["input_ids"]
        == exact["input_ids"]
    )


def test_train_on_inputs_false_masks_the_prompt(tiny_tokenizer):
    n_prompt = len(tiny_tokenizer(build_prompt(RECORD["instruction"]))["input_ids"])
    example = tokenize_record(tiny_tokenizer, RECORD, train_on_inputs=False)
    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:]
    response = tiny_tokenizer.decode(example["labels"][n_prompt:], skip_special_tokens=True)
    assert response == RECORD["output"]


def test_tokenize_dataset_counts_truncations(tiny_tokenizer, caplog):
    short = dict(RECORD)
    long = dict(RECORD, output="It is 4. " * 50)
    cutoff = _n_tokens(tiny_tokenizer, short) + 10
    with caplog.at_level("INFO", logger="perft_exp.data.collate"):
        examples, n_truncated = tokenize_dataset(tiny_tokenizer, [short, long, long], cutoff_len=cutoff)
    assert n_truncated == 2
    assert "2 truncated" in caplog.text
    assert [len(e["input_ids"]) for e in examples] == [cutoff - 9, cutoff, cutoff]
    assert all(set(e) == {"input_ids", "attention_mask", "labels"} for e in examples)


def test_collator_right_pads(tiny_tokenizer):
    features = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE_INDEX, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [8]},
    ]
    pad = tiny_tokenizer.pad_token_id
    batch = CausalLMCollator(tiny_tokenizer)(features)
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, pad, pad]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]))
    assert CausalLMCollator(tiny_tokenizer, pad_to_multiple_of=8)(features)["input_ids"].shape == (2, 8)
