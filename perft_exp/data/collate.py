"""Tokenization of LLM-Adapters records for causal-LM training, and the padding collator.

The full text is `build_training_prompt(instruction, input, prompt) + output` (the clean template by default),
cut at `cutoff_len` tokens; EOS is appended only when the text is shorter than the cutoff (the LLM-Adapters
rule, so a truncated example never learns to stop mid-sentence). With `train_on_inputs=False` the prompt
tokens get label -100 and only the response is learned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from perft_exp.data.prompts import build_training_prompt

IGNORE_INDEX = -100

log = logging.getLogger(__name__)


def tokenize_record(
    tokenizer: Any,
    record: dict,
    cutoff_len: int = 256,
    train_on_inputs: bool = True,
    add_eos: bool = True,
    prompt: str = "clean",
) -> dict:
    """{input_ids, attention_mask, labels, truncated} for one record; `truncated` = tokens were dropped.
    `prompt`: the template, "clean" or "authors" (perft_exp.data.prompts)."""
    head = build_training_prompt(record["instruction"], record.get("input", ""), prompt)
    ids = tokenizer(head + record["output"])["input_ids"]
    truncated = len(ids) > cutoff_len
    ids = ids[:cutoff_len]
    if add_eos and len(ids) < cutoff_len and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    labels = list(ids)
    if not train_on_inputs:
        n_prompt = min(len(tokenizer(head)["input_ids"]), len(ids))
        labels[:n_prompt] = [IGNORE_INDEX] * n_prompt
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "truncated": truncated}


def tokenize_dataset(
    tokenizer: Any,
    records: list[dict],
    cutoff_len: int = 256,
    train_on_inputs: bool = True,
    add_eos: bool = True,
    prompt: str = "clean",
) -> tuple[list[dict], int]:
    """(examples with input_ids/attention_mask/labels, number of truncated examples)."""
    examples, n_truncated = [], 0
    for record in records:
        example = tokenize_record(tokenizer, record, cutoff_len, train_on_inputs, add_eos, prompt)
        n_truncated += example.pop("truncated")
        examples.append(example)
    log.info("tokenized %d examples, %d truncated at %d tokens", len(examples), n_truncated, cutoff_len)
    return examples, n_truncated


@dataclass
class CausalLMCollator:
    """Right-pads a list of tokenized examples into tensors; padded labels are -100.

    input_ids, attention_mask and labels come out (B, L) long, L the longest example (rounded up to a
    multiple of `pad_to_multiple_of` when set)."""

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            # Padded positions are masked out of attention and loss, so any valid id works.
            pad_id = self.tokenizer.eos_token_id
        assert pad_id is not None, "the tokenizer has neither a pad nor an EOS token"
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def pad(key: str, value: int) -> torch.Tensor:
            rows = [list(f[key]) + [value] * (length - len(f[key])) for f in features]
            return torch.tensor(rows, dtype=torch.long)

        return {
            "input_ids": pad("input_ids", pad_id),
            "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE_INDEX),
        }
