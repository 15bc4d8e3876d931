"""Evaluation as a run's `eval` group sets it: one place that reads EvalConfig into `evaluate`'s keywords.

The training run, the base model's evaluation cache and scripts/evaluate.py evaluate through it. It lives
apart from evaluator.py, which stays free of the config module (the tiny model's probes import the evaluator,
and the config module reaches the tiny model's cache).
"""

from __future__ import annotations

from typing import Any

from perft_exp.config import EvalConfig
from perft_exp.evaluation.evaluator import evaluate


def evaluate_with(
    ev: EvalConfig, model: Any, tokenizer: Any, test_sets: dict[str, list[dict]], **kwargs
) -> dict:
    """`evaluate` with the `eval` group's settings (mode, batch size, new tokens, protocol); `kwargs`: the
    rest of evaluate's keywords (out_dir, progress, synced_gpus)."""
    return evaluate(
        model,
        tokenizer,
        test_sets,
        mode=ev.mode,
        batch_size=ev.batch_size,
        max_new_tokens=ev.max_new_tokens,
        protocol=ev.protocol,
        **kwargs,
    )
