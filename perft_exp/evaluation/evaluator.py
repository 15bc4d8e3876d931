"""Batched evaluation of a Hugging Face causal LM on LLM-Adapters test sets.

Three modes:
- `paper`: the authors' protocol: deterministic 4-beam search; commonsense prompts are prefilled
  with "the correct answer is" and get up to 4 new tokens, math up to 256.
- `greedy`: greedy decoding, no prefill; commonsense up to 16 new tokens, math up to 256.
- `score`: commonsense sets only: rank the dataset's labels by the summed log-likelihood of their
  tokens after "<prompt>the correct answer is"; no decoding, no extraction failures.

Prompts are left-padded (the attention mask and mask-derived position ids are passed, so a
question's prediction does not depend on its batch) and sorted by length within each set to cut
padding; rows come back in the original order. Per-question rows go to `<out_dir>/<set>.jsonl`.

    from perft_exp.evaluation import evaluate
    results = evaluate(model, tokenizer, load_test_sets(data_dir, ["boolq"]), mode="paper", out_dir="out")
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from perft_exp.data.formats import COMMONSENSE_TEST_SETS, canonical_test_set
from perft_exp.data.prompts import COMMONSENSE_PREFILL, response_of
from perft_exp.evaluation.extract import CHOICE_LABELS, extract_aqua_authors
from perft_exp.evaluation.metrics import average_metrics, macro_average, summarize_set
from perft_exp.evaluation.protocol import AUTHORS, FIXED, Protocol

MODES = ("greedy", "paper", "score")

# (mode, task) -> default max_new_tokens; task is "commonsense" or "math".
_MAX_NEW_TOKENS = {
    ("paper", "commonsense"): 4,
    ("paper", "math"): 256,
    ("greedy", "commonsense"): 16,
    ("greedy", "math"): 256,
}
_NUM_BEAMS = {"paper": 4, "greedy": 1}


def _task(name: str) -> str:
    return "commonsense" if name in COMMONSENSE_TEST_SETS else "math"


def max_new_tokens_for(mode: str, kind: str, override: int | None = None) -> int:
    """How many tokens a `kind` ("commonsense" | "math") question may generate: `override`
    (eval.max_new_tokens) when set, else the mode's default (paper: the authors' 4 and 256)."""
    return override or _MAX_NEW_TOKENS[(mode, kind)]


@contextmanager
def left_padding(tokenizer: Any) -> Iterator[None]:
    """Left padding (and EOS as pad when there is no pad token) for the duration, then restored."""
    side, had_pad = tokenizer.padding_side, tokenizer.pad_token is not None
    tokenizer.padding_side = "left"
    if not had_pad:
        assert tokenizer.eos_token is not None, "the tokenizer has neither a pad nor an EOS token"
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if not had_pad:
            tokenizer.pad_token = None


def _batches(order: list[int], batch_size: int, desc: str, progress: bool) -> Iterator[list[int]]:
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        yield order[start : start + batch_size]


def _pad(tokenizer: Any, ids: list[list[int]], device: torch.device) -> dict[str, torch.Tensor]:
    batch = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def _generate_set(
    model: Any,
    tokenizer: Any,
    name: str,
    records: list[dict],
    mode: str,
    batch_size: int,
    max_new_tokens: int | None,
    progress: bool,
    synced_gpus: bool = False,
    protocol: Protocol = FIXED,
) -> list[dict]:
    # The authors' commonsense string always ends in the prefill; the fixed protocol prefills in paper mode.
    prefill = _task(name) == "commonsense" and (mode == "paper" or protocol.name == "authors")
    prompts = [protocol.prompt(r, COMMONSENSE_PREFILL if prefill else "") for r in records]
    ids = tokenizer(prompts)["input_ids"]
    # Longest first: similar lengths share a batch, and an out-of-memory shows in the first batch.
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    decoding = {
        "do_sample": False,
        "num_beams": _NUM_BEAMS[mode],
        "num_return_sequences": 1,
        "max_new_tokens": max_new_tokens_for(mode, _task(name), max_new_tokens),
        "early_stopping": False,
        "length_penalty": 1.0,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "use_cache": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if synced_gpus:  # ZeRO-3 over several ranks: every rank runs every forward, none stops early
        decoding["synced_gpus"] = True
    responses: list[str] = [""] * len(prompts)
    for batch in _batches(order, batch_size, name, progress):
        # generate derives position ids from the mask, so left padding does not shift positions.
        inputs = _pad(tokenizer, [ids[i] for i in batch], model.device)
        out = model.generate(**inputs, **decoding)
        for i, text in zip(batch, tokenizer.batch_decode(out, skip_special_tokens=True)):
            responses[i] = response_of(text)
    return [_row(name, i, prompts[i], responses[i], r["answer"], protocol) for i, r in enumerate(records)]


def _row(name: str, index: int, prompt: str, response: str, label: str, protocol: Protocol = FIXED) -> dict:
    extracted = protocol.extract(name, response)
    row = {
        "id": index,
        "prompt": prompt,
        "response": response,
        "extracted": extracted,
        "label": label,
        "correct": protocol.is_correct(name, extracted, label),
    }
    if name == "AQuA" and protocol.name == "fixed":
        row["extracted_authors"] = extract_aqua_authors(response)
        row["correct_authors"] = AUTHORS.is_correct(name, row["extracted_authors"], label)
    return row


def _label_start(context_ids: list[int], full_ids: list[int]) -> int:
    """Where the label's tokens start in `full_ids`: after the longest prefix shared with the context.

    Tokenizing context and label together keeps the label's real tokenization (e.g. " true" as one
    token); if the tokenizer merged across the boundary, the merged tail is scored with the label.
    """
    start = 0
    while start < min(len(context_ids), len(full_ids) - 1) and context_ids[start] == full_ids[start]:
        start += 1
    return max(start, 1)  # the first token has no prediction to score


def _score_set(
    model: Any,
    tokenizer: Any,
    name: str,
    records: list[dict],
    batch_size: int,
    progress: bool,
    protocol: Protocol = FIXED,
) -> list[dict]:
    labels = CHOICE_LABELS[name]
    contexts = [protocol.prompt(r, COMMONSENSE_PREFILL) for r in records]
    context_ids = tokenizer(contexts)["input_ids"]
    # The space goes with the label, not the context, so the label keeps its in-text tokenization.
    full_ids = [tokenizer([c + " " + label for label in labels])["input_ids"] for c in contexts]
    order = sorted(range(len(records)), key=lambda i: -len(context_ids[i]))
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    scores: list[list[float]] = [[] for _ in records]
    for batch in _batches(order, batch_size, name, progress):
        seqs = [full for i in batch for full in full_ids[i]]  # (question, label) pairs, label fastest
        starts = [_label_start(context_ids[i], full) for i in batch for full in full_ids[i]]
        n_scored = torch.tensor([len(s) - start for s, start in zip(seqs, starts)], device=model.device)
        width = int(n_scored.max())
        inputs = _pad(tokenizer, seqs, model.device)
        # A plain forward numbers the left padding too; positions must count real tokens only.
        inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        # With left padding every label ends at the last column: only the last width+1 logits matter.
        kwargs = {"logits_to_keep": width + 1} if keeps_logits else {}
        logits = model(**inputs, use_cache=False, **kwargs).logits[:, -(width + 1) : -1]  # (B*K, W, V)
        targets = inputs["input_ids"][:, -width:]  # (B*K, W)
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]
        scored = torch.arange(width, device=model.device)[None, :] >= (width - n_scored)[:, None]
        totals = logprobs.masked_fill(~scored, 0.0).sum(-1).view(len(batch), len(labels)).tolist()
        for i, row in zip(batch, totals):
            scores[i] = row
    rows = []
    for i, record in enumerate(records):
        best = labels[max(range(len(labels)), key=lambda k: scores[i][k])]
        row = _row(name, i, contexts[i], f"{COMMONSENSE_PREFILL} {best}", record["answer"], protocol)
        row["scores"] = dict(zip(labels, scores[i]))
        rows.append(row)
    return rows


def evaluate(
    model: Any,
    tokenizer: Any,
    test_sets: dict[str, list[dict]],
    mode: str = "greedy",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    synced_gpus: bool = False,
    protocol: str = "fixed",
) -> dict:
    """Per-set metrics, plus the over-set averages and overall "questions_per_s".

    Per set: accuracy, n, correct, questions_per_s and what tells knowledge from guessing (chance,
    majority, skill = accuracy - majority, top_prediction_share; perft_exp.evaluation.metrics).
    Fractions in [0, 1]; "average" is the unweighted mean accuracy over sets, `average_skill`,
    `average_majority`, ... (metrics.AVERAGE_KEYS) those of the other metrics. AQuA also reports
    `accuracy_authors_rule`. In `score` mode `batch_size` counts questions, each of which
    expands to one sequence per label. `protocol` ("fixed" | "authors", perft_exp.evaluation.protocol) picks
    the prompt strings and the answer matching. `synced_gpus`: the model is sharded with ZeRO-3 over several
    ranks, each of which calls evaluate on the same questions (forwards gather the shards collectively).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rules = Protocol(protocol)
    sets = {canonical_test_set(name): records for name, records in test_sets.items()}
    if mode == "score" and (math_sets := [n for n in sets if _task(n) == "math"]):
        raise ValueError(f"score mode ranks commonsense labels; it cannot score {math_sets}")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    total_seconds = 0.0
    was_training = model.training
    model.eval()
    try:
        with left_padding(tokenizer), torch.inference_mode():
            for name, records in sets.items():
                start = time.perf_counter()
                if mode == "score":
                    rows = _score_set(model, tokenizer, name, records, batch_size, progress, rules)
                else:
                    rows = _generate_set(
                        model,
                        tokenizer,
                        name,
                        records,
                        mode,
                        batch_size,
                        max_new_tokens,
                        progress,
                        synced_gpus,
                        rules,
                    )
                seconds = time.perf_counter() - start
                total_seconds += seconds
                results[name] = summarize_set(rows, seconds, name)
                if out_dir is not None:
                    with open(Path(out_dir) / f"{name}.jsonl", "w", encoding="utf-8") as f:
                        f.writelines(json.dumps(row) + "\n" for row in rows)
    finally:
        model.train(was_training)
    per_set = dict(results)
    results["average"] = macro_average(per_set)
    results.update(average_metrics(per_set))
    n_total = sum(s["n"] for s in per_set.values())
    results["questions_per_s"] = n_total / total_seconds if total_seconds > 0 else float("inf")
    return results
