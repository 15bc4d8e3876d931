"""Per-question evaluation rows -> per-set metrics that tell knowledge from guessing, and their averages.

The rows are what `evaluate()` writes to `<run>/eval/<set>.jsonl` (`prompt`, `extracted`, `label`,
`correct`, ...). Per test set:

- `accuracy`, `n`, `correct`;
- `chance`: the expected accuracy of a uniform guess among each question's options (1 / number of
  options, averaged over questions). Commonsense options are read from the prompt's
  "Answer format: a/b/c" line (ARC and OBQA questions differ in their number), else the set's label
  vocabulary; AQuA has 5 letters; open numeric answers have no chance rate (None);
- `majority` (with `majority_label`): the share of the most common gold label, i.e. the accuracy of the
  best constant answer;
- `skill = accuracy - majority`: above 0 only when the model beats every constant answer;
- `top_prediction`, `top_prediction_share`: the most common `extracted` value (None, a failed
  extraction, counts as a value of its own) and its share; 1.0 means one answer for every question.

Over sets (AVERAGE_KEYS, top-level numbers beside the per-set dicts): `average` stays the unweighted
mean accuracy (the paper's number); `average_skill`, `average_majority`, `average_chance` (None unless
every set has a chance rate) and `average_top_prediction_share` are unweighted means too, and
`max_top_prediction_share` is the largest share of one prediction in any set.

    from perft_exp.evaluation.metrics import metrics_from_run_dir
    m = metrics_from_run_dir("outputs/runs/synthetic_commonsense/tiny_olmoe/R-n4-k2-r16-adapter")
    m["average_skill"], m["boolq"]["top_prediction_share"]
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from perft_exp.data.formats import ALL_TEST_SETS, MATH_TEST_SETS, canonical_test_set
from perft_exp.evaluation.extract import AQUA_LETTERS, CHOICE_LABELS
from perft_exp.run_dir import RECORDS_DIR

# Keys that `set_metrics` adds beyond accuracy / n / correct (a run's results without them predate them).
KNOWLEDGE_KEYS = ("chance", "majority", "majority_label", "skill", "top_prediction", "top_prediction_share")
# Over-set averages: (results key, per-set key averaged); and the largest top-prediction share.
_AVERAGED = (
    ("average_skill", "skill"),
    ("average_majority", "majority"),
    ("average_chance", "chance"),
    ("average_top_prediction_share", "top_prediction_share"),
)
AVERAGE_KEYS = (*(key for key, _ in _AVERAGED), "max_top_prediction_share")

_ANSWER_FORMAT = re.compile(r"Answer format:[ \t]*([^\n]+)")


def _canonical(name: str) -> str:
    try:
        return canonical_test_set(name)
    except ValueError:
        return name  # a set this code does not know: labels compared as strings, chance from the prompt


def answer_options(name: str, prompt: str = "") -> int | None:
    """How many answers a question offers: its "Answer format:" line, else the set's; None if open-ended."""
    found = _ANSWER_FORMAT.findall(prompt or "")
    if found:
        options = [o for o in found[-1].split("/") if o.strip()]
        if options:
            return len(options)
    name = _canonical(name)
    if name in CHOICE_LABELS:
        return len(CHOICE_LABELS[name])
    if name == "AQuA":
        return len(AQUA_LETTERS)
    return None


def chance_rate(name: str, rows: list[dict]) -> float | None:
    """Mean over questions of 1 / number of options; None when any question has an open answer."""
    options = [answer_options(name, row.get("prompt", "")) for row in rows]
    if not options or any(k is None for k in options):
        return None
    return sum(1 / k for k in options) / len(options)


def _label_key(name: str, label: Any) -> Any:
    """A gold label as `is_correct` compares it: numbers by value, choice labels case-blind."""
    if (canonical := _canonical(name)) in MATH_TEST_SETS and canonical != "AQuA":
        try:
            return float(str(label).replace(",", ""))
        except ValueError:
            pass
    return str(label).strip().lower()


def majority(name: str, rows: list[dict]) -> tuple[Any, float]:
    """(the most common gold label, its share): the best constant answer and its accuracy."""
    if not rows:
        return None, 0.0
    keys = [_label_key(name, row["label"]) for row in rows]
    key, count = Counter(keys).most_common(1)[0]  # ties: the label met first
    label = next(row["label"] for row, k in zip(rows, keys) if k == key)
    return label, count / len(rows)


def majority_hits(name: str, rows: list[dict]) -> list[bool]:
    """Per question: does the majority label (the best constant answer) answer it correctly?"""
    label, _ = majority(name, rows)
    key = _label_key(name, label)
    return [_label_key(name, row["label"]) == key for row in rows]


def top_prediction(rows: list[dict]) -> tuple[Any, float]:
    """(the most common extracted prediction, its share); None predictions count as one value."""
    if not rows:
        return None, 0.0
    value, count = Counter(row.get("extracted") for row in rows).most_common(1)[0]
    return value, count / len(rows)


def set_metrics(name: str, rows: list[dict]) -> dict:
    """{accuracy, n, correct, chance, majority, majority_label, skill, top_prediction,
    top_prediction_share}."""
    n = len(rows)
    correct = sum(bool(row["correct"]) for row in rows)
    accuracy = correct / n if n else 0.0
    label, rate = majority(name, rows)
    top, share = top_prediction(rows)
    return {
        "accuracy": accuracy,
        "n": n,
        "correct": correct,
        "chance": chance_rate(name, rows),
        "majority": rate,
        "majority_label": label,
        "skill": accuracy - rate,
        "top_prediction": top,
        "top_prediction_share": share,
    }


def summarize_set(rows: list[dict], seconds: float, name: str) -> dict:
    """`set_metrics` plus questions_per_s (and accuracy_authors_rule where rows carry it)."""
    summary = set_metrics(name, rows)
    summary["questions_per_s"] = len(rows) / seconds if seconds > 0 else float("inf")
    if rows and "correct_authors" in rows[0]:
        summary["accuracy_authors_rule"] = sum(row["correct_authors"] for row in rows) / len(rows)
    return summary


def macro_average(per_set: dict[str, dict]) -> float:
    """The unweighted mean of the per-set accuracies (the paper's "average")."""
    assert per_set, "no test sets to average"
    return sum(s["accuracy"] for s in per_set.values()) / len(per_set)


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def average_metrics(per_set: dict[str, dict]) -> dict:
    """{average_skill, average_majority, average_chance, average_top_prediction_share: unweighted means over
    sets (None where a set lacks the value), max_top_prediction_share}."""
    assert per_set, "no test sets to average"
    out = {key: _mean([s.get(name) for s in per_set.values()]) for key, name in _AVERAGED}
    shares = [s.get("top_prediction_share") for s in per_set.values()]
    out["max_top_prediction_share"] = None if None in shares else max(shares)
    return out


# --- records on disk ------------------------------------------------------------------------------


def read_records(path: str | Path) -> list[dict]:
    """The rows of one `<set>.jsonl` file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _set_order(name: str) -> tuple:
    return (ALL_TEST_SETS.index(name), "") if name in ALL_TEST_SETS else (len(ALL_TEST_SETS), name)


def record_files(records_dir: str | Path) -> dict[str, Path]:
    """{set name: path} of the `<set>.jsonl` files in a directory, in the paper's set order."""
    found = {_canonical(p.stem): p for p in Path(records_dir).glob("*.jsonl")}
    return {name: found[name] for name in sorted(found, key=_set_order)}


def records_dir_of(run_dir: str | Path) -> Path:
    """Where a run keeps its per-question records: `<run>/eval`, or the directory itself if it holds them."""
    run_dir = Path(run_dir)
    if (run_dir / RECORDS_DIR).is_dir():
        return run_dir / RECORDS_DIR
    if any(run_dir.glob("*.jsonl")):
        return run_dir
    raise FileNotFoundError(f"{run_dir} holds no per-question records ({RECORDS_DIR}/<set>.jsonl)")


def metrics_from_records(sets: dict[str, list[dict]]) -> dict:
    """{set: set_metrics, "average": mean accuracy, **average_metrics} of rows per set."""
    per_set = {_canonical(name): set_metrics(name, rows) for name, rows in sets.items()}
    return {**per_set, "average": macro_average(per_set), **average_metrics(per_set)}


def metrics_from_run_dir(run_dir: str | Path) -> dict:
    """The metrics recomputed from a run's `eval/<set>.jsonl` records (or a directory of such files)."""
    files = record_files(records_dir_of(run_dir))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no <set>.jsonl records")
    return metrics_from_records({name: read_records(path) for name, path in files.items()})


def has_knowledge_metrics(result: dict) -> bool:
    """Does an `evaluate()` result (a run's results, `eval`) carry the metrics of this module?"""
    sets = [m for _, m in iter_set_metrics(result)]
    return bool(sets) and all("skill" in m for m in sets) and all(k in result for k in AVERAGE_KEYS)


def with_knowledge_metrics(result: dict, records_dir: str | Path | None) -> dict:
    """`result` with the metrics filled in from the records where an older version left them out.

    Sets without records keep what they have; the averages are recomputed over all sets.
    """
    if has_knowledge_metrics(result) or records_dir is None or not Path(records_dir).is_dir():
        return result
    out = dict(result)
    for name, path in record_files(records_dir).items():
        if isinstance(out.get(name), dict):
            out[name] = {**set_metrics(name, read_records(path)), **out[name]}
    per_set = dict(iter_set_metrics(out))
    if per_set:
        out.update(average_metrics(per_set))
    return out


def iter_set_metrics(result: dict) -> Iterable[tuple[str, dict]]:
    """(set, metrics) pairs of an `evaluate()` result: its dict values (the rest are over-set numbers)."""
    for name, value in result.items():
        if isinstance(value, dict) and "accuracy" in value:
            yield name, value


# --- the console table ----------------------------------------------------------------------------


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return ""
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def metrics_table(tuned: dict, base: dict | None = None, label: str = "tuned") -> str:
    """Per set and on average: base and tuned accuracy, majority, chance, skill and the top prediction (%).

    `label` heads the column of `tuned`'s scores ("frozen" for an evaluation-only run of the base model)."""
    base = base or {}
    rows = [f"{'test set':<16}{'base':>7}{label:>7}{'majority':>10}{'chance':>8}{'skill':>8}  top prediction"]
    for name, m in iter_set_metrics(tuned):
        b = base.get(name, {}).get("accuracy") if isinstance(base.get(name), dict) else None
        share = m.get("top_prediction_share")
        top = "" if share is None else f"{100 * share:.0f}% {m.get('top_prediction')!s}"
        rows.append(
            f"{name:<16}{_pct(b):>7}{_pct(m['accuracy']):>7}{_pct(m.get('majority')):>10}"
            f"{_pct(m.get('chance')):>8}{_pct(m.get('skill'), signed=True):>8}  {top}"
        )
    worst = tuned.get("max_top_prediction_share")
    rows.append(
        f"{'average':<16}{_pct(base.get('average')):>7}{_pct(tuned.get('average')):>7}"
        f"{_pct(tuned.get('average_majority')):>10}{_pct(tuned.get('average_chance')):>8}"
        f"{_pct(tuned.get('average_skill'), signed=True):>8}  "
        f"{'' if worst is None else f'max {100 * worst:.0f}%'}"
    )
    return "\n".join(rows)
