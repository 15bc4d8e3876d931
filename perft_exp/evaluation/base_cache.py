"""The untuned base model's evaluation, cached across runs below the output root.

    <output_root>/base_eval/<task>/<model>/<mode>-<key>.json   the result (run_dir.py: base_eval_dir)
    <output_root>/base_eval/<task>/<model>/<mode>-<key>/        its per-question records

`base_eval_cache` keys the file by everything the result depends on; `base_eval` reads it, or evaluates the
base model (the run's adapters switched off) and writes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from perft_exp.adapters.model import adapters_disabled
from perft_exp.config import EvalConfig, ModelConfig, TaskConfig
from perft_exp.evaluation.configured import evaluate_with
from perft_exp.evaluation.metrics import with_knowledge_metrics
from perft_exp.files import atomic_write_json, writing
from perft_exp.run_dir import base_eval_dir


def base_eval_cache(
    output_root: str | Path, model: ModelConfig, task: TaskConfig, ev: EvalConfig, weights: str, tests: dict
) -> Path:
    """Where the untuned base model's evaluation is cached:
    `<output_root>/base_eval/<task>/<model>/<mode>-<key>.json`, its per-question records in the directory of
    the same name without `.json`.

    The cache key covers everything the result depends on: the resolved weights (`weights`, the loaded model's
    name_or_path: a tiny model's directory name carries its build hash; model.pretrained when empty), dtype,
    the 4-bit quantisation, decoding settings and the exact test records (so `task.max_test_examples` or
    edited data never reuse a stale score).
    """
    key_src = {
        "weights": str(weights or model.pretrained),
        "pretrained": model.pretrained,
        "dtype": model.dtype,
        "mode": ev.mode,
        "max_new_tokens": ev.max_new_tokens,
        "protocol": ev.protocol,
        "tests": {
            name: hashlib.sha1(json.dumps(recs, sort_keys=True).encode()).hexdigest()
            for name, recs in sorted(tests.items())
        },
    }
    if model.quantization != "none":  # a 4-bit base answers differently (unquantised keys stay as they were)
        key_src["quantization"] = [str(model.quantization), str(model.quant_type), model.double_quant]
    key = hashlib.sha1(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:10]
    return base_eval_dir(output_root, task.name, model.name) / f"{ev.mode}-{key}.json"


def base_eval(
    model, tokenizer, tests: dict, ev: EvalConfig, cache: Path, main: bool = True, sharded: bool = False
) -> dict:
    """The untuned base model's evaluation, cached across runs in `cache` (see base_eval_cache). `main`: this
    process writes the records and the cache (rank 0); `sharded`: every rank evaluates the ZeRO-3 model."""
    if cache.is_file():  # (sharded: the ranks share a file system, so they agree on this)
        # a cache written before the knowledge metrics existed gets them from its records
        return with_knowledge_metrics(json.loads(cache.read_text()), cache.with_suffix(""))
    with adapters_disabled(model), writing(cache.with_suffix("")):
        result = evaluate_with(
            ev,
            model,
            tokenizer,
            tests,
            out_dir=cache.with_suffix("") if main else None,
            progress=main,
            synced_gpus=sharded,
        )
    if main:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, result)
    return result
