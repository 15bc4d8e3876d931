"""Batched evaluation on a random tiny OLMoE: batch invariance, label scoring, output files."""

import copy
import json

import pytest
import torch

from perft_exp.data.prompts import COMMONSENSE_PREFILL, build_prompt
from perft_exp.evaluation import evaluate
from perft_exp.evaluation.extract import CHOICE_LABELS
from perft_exp.evaluation.metrics import AVERAGE_KEYS


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    # The tiny model's ops are too small to gain from threads, and on a shared CPU OpenMP threads
    # waiting for busy cores slow generation by 10-100x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _boolq(n: int, offset: int = 0) -> list[dict]:
    # Lengths vary from a few to ~30 extra tokens so batches mix heavy and no padding.
    return [
        {
            "instruction": "Please answer the following question with true or false, question: "
            + "is water wet " * ((i + offset) % 9),
            "input": "",
            "answer": "true" if i % 2 else "false",
        }
        for i in range(n)
    ]


def _math(n: int) -> list[dict]:
    return [
        {"instruction": f"What is {i} plus {i}? " + "x " * (3 * i), "input": "", "answer": str(2 * i)}
        for i in range(n)
    ]


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_greedy_is_batch_invariant(tiny_lm, tiny_tokenizer, tmp_path):
    sets = {"boolq": _boolq(8), "gsm8k": _math(3)}
    kwargs = {"mode": "greedy", "max_new_tokens": 6, "progress": False}
    evaluate(tiny_lm, tiny_tokenizer, sets, batch_size=1, out_dir=tmp_path / "bs1", **kwargs)
    evaluate(tiny_lm, tiny_tokenizer, sets, batch_size=16, out_dir=tmp_path / "bs16", **kwargs)
    for name in sets:
        single = _read_jsonl(tmp_path / "bs1" / f"{name}.jsonl")
        batched = _read_jsonl(tmp_path / "bs16" / f"{name}.jsonl")
        assert [r["response"] for r in batched] == [r["response"] for r in single]
        # Rows come back in the original order, not the length-sorted one.
        assert [r["id"] for r in batched] == list(range(len(sets[name])))
        assert [r["prompt"] for r in batched] == [build_prompt(r["instruction"]) for r in sets[name]]
    # A degenerate model (same text for every prompt) would make the comparison vacuous.
    assert len({r["response"] for r in single}) > 1


def test_left_padding_does_not_change_logits(tiny_lm, tiny_tokenizer):
    prompts = [build_prompt("short"), build_prompt("a much longer instruction " * 6)]
    with torch.inference_mode():
        alone = tiny_lm(**tiny_tokenizer(prompts[:1], return_tensors="pt")).logits[0]
        batch = tiny_tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        padded = tiny_lm(**batch, position_ids=position_ids).logits[0, -alone.shape[0] :]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)
    assert torch.equal(padded.argmax(-1), alone.argmax(-1))


def test_paper_mode_prefills_and_is_batch_invariant(tiny_lm, tiny_tokenizer, tmp_path):
    sets = {"BoolQ": _boolq(4)}
    a = evaluate(
        tiny_lm, tiny_tokenizer, sets, mode="paper", batch_size=1, out_dir=tmp_path / "a", progress=False
    )
    evaluate(
        tiny_lm, tiny_tokenizer, sets, mode="paper", batch_size=4, out_dir=tmp_path / "b", progress=False
    )
    rows_a, rows_b = _read_jsonl(tmp_path / "a" / "boolq.jsonl"), _read_jsonl(tmp_path / "b" / "boolq.jsonl")
    assert [r["response"] for r in rows_a] == [r["response"] for r in rows_b]
    assert all(r["prompt"].endswith("### Response:\n" + COMMONSENSE_PREFILL) for r in rows_a)
    assert all(r["response"].startswith(COMMONSENSE_PREFILL) for r in rows_a)
    assert set(a) == {"boolq", "average", "questions_per_s", *AVERAGE_KEYS}


def _label_logprob(model, tokenizer, context: str, label: str) -> float:
    """Oracle: one unpadded forward per (question, label), summing the label tokens' log-probs."""
    n_context = len(tokenizer(context)["input_ids"])
    ids = tokenizer(context + " " + label, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(logprobs[t - 1, ids[0, t]].item() for t in range(n_context, ids.shape[1]))


def test_score_mode_matches_unbatched_oracle(tiny_lm, tiny_tokenizer, tmp_path):
    sets = {
        "boolq": _boolq(5),
        "hellaswag": [{"instruction": "Pick an ending " * k, "answer": "ending2"} for k in (1, 4)],
    }
    evaluate(tiny_lm, tiny_tokenizer, sets, mode="score", batch_size=3, out_dir=tmp_path, progress=False)
    for name, records in sets.items():
        rows = _read_jsonl(tmp_path / f"{name}.jsonl")
        for row, record in zip(rows, records):
            assert row["extracted"] in CHOICE_LABELS[name]
            assert list(row["scores"]) == list(CHOICE_LABELS[name])
            context = build_prompt(record["instruction"]) + COMMONSENSE_PREFILL
            expected = [
                _label_logprob(tiny_lm, tiny_tokenizer, context, label) for label in CHOICE_LABELS[name]
            ]
            assert list(row["scores"].values()) == pytest.approx(expected, abs=1e-3)
            assert row["extracted"] == max(row["scores"], key=row["scores"].get)


def test_score_mode_rejects_math_sets(tiny_lm, tiny_tokenizer):
    with pytest.raises(ValueError, match="score mode"):
        evaluate(tiny_lm, tiny_tokenizer, {"gsm8k": _math(1)}, mode="score", progress=False)
    with pytest.raises(ValueError, match="mode must be"):
        evaluate(tiny_lm, tiny_tokenizer, {"boolq": _boolq(1)}, mode="sample", progress=False)


def _score(model, tokenizer, sets, out_dir) -> dict:
    return evaluate(model, tokenizer, sets, mode="score", out_dir=out_dir, progress=False)


def test_average_is_unweighted_and_jsonl_fields(tiny_lm, tiny_tokenizer, tmp_path):
    boolq, piqa = _boolq(8), [{"instruction": "Solve it " * (k + 1), "answer": "solution1"} for k in range(2)]
    _score(tiny_lm, tiny_tokenizer, {"boolq": boolq, "piqa": piqa}, tmp_path)
    # Relabel from the model's own predictions: boolq gets 2 of 8 right, piqa 2 of 2.
    flip = {"true": "false", "false": "true"}
    boolq_rows, piqa_rows = _read_jsonl(tmp_path / "boolq.jsonl"), _read_jsonl(tmp_path / "piqa.jsonl")
    boolq = [
        dict(r, answer=row["extracted"] if i < 2 else flip[row["extracted"]])
        for i, (r, row) in enumerate(zip(boolq, boolq_rows))
    ]
    piqa = [dict(r, answer=row["extracted"]) for r, row in zip(piqa, piqa_rows)]
    results = _score(tiny_lm, tiny_tokenizer, {"boolq": boolq, "piqa": piqa}, tmp_path)
    assert (results["boolq"]["accuracy"], results["boolq"]["n"], results["boolq"]["correct"]) == (0.25, 8, 2)
    assert (results["piqa"]["accuracy"], results["piqa"]["n"], results["piqa"]["correct"]) == (1.0, 2, 2)
    assert results["average"] == pytest.approx((0.25 + 1.0) / 2)  # the weighted mean would be 0.4
    assert results["questions_per_s"] > 0 and results["boolq"]["questions_per_s"] > 0
    for row in _read_jsonl(tmp_path / "boolq.jsonl"):
        assert {"id", "prompt", "response", "extracted", "label", "correct"} <= set(row)


def test_aqua_reports_both_rules(tiny_lm, tiny_tokenizer, tmp_path):
    aqua = [
        {"instruction": f"Pick one. Answer Choices: (A) 1 (B) 2 (C) {i}", "answer": "C"} for i in range(3)
    ]
    results = evaluate(
        tiny_lm, tiny_tokenizer, {"aqua": aqua}, max_new_tokens=4, out_dir=tmp_path, progress=False
    )
    assert "accuracy_authors_rule" in results["AQuA"]
    rows = _read_jsonl(tmp_path / "AQuA.jsonl")
    assert all({"extracted", "extracted_authors", "correct", "correct_authors"} <= set(r) for r in rows)


def test_tokenizer_state_is_restored_and_missing_pad_uses_eos(tiny_lm, tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    results = evaluate(
        tiny_lm, tokenizer, {"boolq": _boolq(3)}, max_new_tokens=2, batch_size=3, progress=False
    )
    assert results["boolq"]["n"] == 3
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is None
    assert tiny_lm.training is False


def test_the_base_eval_cache_is_keyed_by_what_the_result_depends_on(tmp_path):
    import dataclasses
    from pathlib import Path

    from perft_exp.config import compose_spec
    from perft_exp.evaluation.base_cache import base_eval, base_eval_cache

    spec = compose_spec(["eval=paper", "output_root=/tmp/root", "model.dtype=float32"])
    tests = {
        "boolq": [{"instruction": "q", "answer": "true"}],
        "piqa": [{"instruction": "p", "answer": "solution1"}],
    }

    def cache(
        weights="/cache/tiny_olmoe-abc123", model=spec.model, ev=spec.eval, records=tests, root="/tmp/root"
    ):
        return base_eval_cache(root, model, spec.task, ev, weights, records)

    # The keys training/run.py gave the cache from the composed config: old caches are found again
    assert cache() == Path("/tmp/root/base_eval/synthetic_commonsense/tiny_olmoe/paper-004517dfa3.json")
    assert cache(weights="").name == "paper-a3a6d71114.json"  # no name_or_path: model.pretrained stands in
    others = [
        cache(weights="/cache/tiny_olmoe-def456"),  # a rebuilt tiny model
        cache(model=dataclasses.replace(spec.model, dtype="bfloat16")),
        cache(model=dataclasses.replace(spec.model, quantization="4bit")),  # a 4-bit base answers otherwise
        cache(model=dataclasses.replace(spec.model, quantization="4bit", quant_type="fp4")),
        cache(ev=dataclasses.replace(spec.eval, max_new_tokens=8)),
        cache(ev=dataclasses.replace(spec.eval, protocol="authors")),
        cache(records={**tests, "boolq": [{"instruction": "q2", "answer": "true"}]}),  # edited data
        cache(records={"boolq": tests["boolq"]}),  # fewer sets
    ]
    assert len({cache(), *others}) == len(others) + 1
    # What the untuned base model's result does not depend on leaves the key alone
    assert cache(ev=dataclasses.replace(spec.eval, batch_size=3)) == cache()

    hit = cache(root=tmp_path)
    hit.parent.mkdir(parents=True)
    hit.write_text(json.dumps({"boolq": {"accuracy": 0.5}, "average": 0.5}))
    # a cached result is read back without touching the model (None here)
    assert base_eval(None, None, tests, spec.eval, hit)["average"] == 0.5
