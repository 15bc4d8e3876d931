"""What a tiny model knows of the synthetic world: its facts as statements, questions and exams (a choice
among each relation's values), and the arithmetic table (greedy completion).

A build records knowledge_report and knowledge_by_relation in its perft_build.json
(perft_exp/models/tiny/build.py); knowledge_table is the command line's `--report`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import transformers

from perft_exp.data import synthetic
from perft_exp.data.synthetic.commonsense import ASKS
from perft_exp.data.synthetic.world import RELATIONS, VALUES
from perft_exp.evaluation.evaluator import left_padding


@torch.no_grad()
def probe_accuracy(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerFast,
    probes: list,
    sep: str = " ",
) -> float:
    """Share of (prefix, value, values) probes whose value's first token the model ranks first among the
    first tokens of the relation's values (a choice among the candidates, not free generation); a
    value continues its prefix after `sep` ("" for an option's number, "answer" -> "3")."""
    if not probes:
        return float("nan")
    prefixes = [tokenizer(p)["input_ids"] for p, _, _ in probes]
    width = max(map(len, prefixes))
    ids = torch.tensor([p + [tokenizer.pad_token_id] * (width - len(p)) for p in prefixes])
    lengths = torch.tensor([len(p) for p in prefixes])
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
    last = logits[torch.arange(len(probes)), lengths - 1].cpu()  # (P, V)
    hits = 0
    for row, (_, value, values) in zip(last, probes):
        firsts = [tokenizer(sep + v, add_special_tokens=False)["input_ids"][0] for v in values]
        hits += firsts[int(row[firsts].argmax())] == firsts[values.index(value)]
    return hits / len(probes)


@torch.no_grad()
def completion_accuracy(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerFast,
    probes: list[tuple[str, int]],
    max_new_tokens: int = 4,
) -> float:
    """Share of (prefix, number) probes whose greedy continuation starts with the number
    ("7 + 5 =" -> " 12.")."""
    if not probes:
        return float("nan")
    hits = 0
    with left_padding(tokenizer):
        for start in range(0, len(probes), 128):
            chunk = probes[start : start + 128]
            enc = tokenizer([p for p, _ in chunk], return_tensors="pt", padding=True).to(model.device)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for row, (_, want) in zip(out[:, enc["input_ids"].shape[1] :], chunk):
                found = re.match(r"\s*(\d+)", tokenizer.decode(row, skip_special_tokens=True))
                hits += found is not None and int(found.group(1)) == want
    return hits / len(probes)


def knowledge_report(
    model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerFast
) -> dict[str, float]:
    """What the model stored (statements) and can read out (questions), on train and held-out facts.

    `question_recall_test` is the one that matters: pre-training never asks about those facts.
    Chance is about 1/3 (the mean of 1 / number of values over the facts).
    """
    report = {"fact_recall": probe_accuracy(model, tokenizer, synthetic.fact_probes())}
    for split in ("train", "test"):
        report[f"fact_recall_{split}"] = probe_accuracy(model, tokenizer, synthetic.fact_probes(split))
        report[f"question_recall_{split}"] = probe_accuracy(
            model, tokenizer, synthetic.question_probes(split)
        )
        # The same facts as pre-training exams: recalled *and* mapped to the option's label.
        report[f"exam_recall_{split}"] = probe_accuracy(
            model, tokenizer, synthetic.exam_probes(split), sep=""
        )
    # The pre-training arithmetic table (the steps of `arithmetic_problems`): what share the model completes.
    report["arithmetic_recall"] = completion_accuracy(model, tokenizer, synthetic.arithmetic_probes())
    return report


def knowledge_by_relation(
    model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerFast
) -> dict[str, dict[str, float]]:
    """The held-out facts' `fact_recall_test`, `question_recall_test` and `exam_recall_test`, per relation.

    A build stores and reads out relation by relation, each nearly all or little (measured: a
    relation at 100 % on one pre-training seed is at 40-50 % on another), so the averages of
    `knowledge_report` hide which test sets a build can serve; each commonsense set asks one or
    two relations (see `perft_exp.data.synthetic.commonsense`).
    """
    return {
        relation: {
            "fact_recall_test": probe_accuracy(model, tokenizer, synthetic.fact_probes("test", relation)),
            "question_recall_test": probe_accuracy(
                model, tokenizer, synthetic.question_probes("test", relation)
            ),
            "exam_recall_test": probe_accuracy(
                model, tokenizer, synthetic.exam_probes("test", relation), sep=""
            ),
        }
        for relation in RELATIONS
    }


def knowledge_table(path: str | Path) -> str:
    """What the tiny model saved at `path` knows of the held-out facts, per relation, as a text table:
    statement completion, question and exam read-out (%, measured now, so older builds report too),
    beside chance (1 / number of values) and the test sets that ask the relation."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    rows = [f"{'relation':10s} {'stored':>7s} {'Q/A':>6s} {'exam':>6s} {'chance':>7s}  asked by"]
    for relation, scores in knowledge_by_relation(model, tokenizer).items():
        stored, qa, exam = (
            100 * scores[k] for k in ("fact_recall_test", "question_recall_test", "exam_recall_test")
        )
        sets = ", ".join(name for name, relations in ASKS.items() if relation in relations) or "-"
        rows.append(
            f"{relation:10s} {stored:7.1f} {qa:6.1f} {exam:6.1f} {100 / len(VALUES[relation]):7.1f}  {sets}"
        )
    return "\n".join(rows)
