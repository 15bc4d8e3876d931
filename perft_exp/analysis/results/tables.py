"""The results tables: results.csv (one row per run) and results.md (per model/task the paper's table and the
skill table).

results.md, per model/task: config (`R (Top2/4)`), r, trainable and activated-trainable parameter ratios (% of
the base model's total / active parameters), accuracy per test set, average; the base model first;
contaminated sets marked; the majority-label and chance reference rows; then a skill table (accuracy -
majority-label rate, per set and average, and the largest share of one prediction). Runs that differ only by
seed are one row with its 95 % interval (runs.merge_seeds); corrupt run directories are listed under "Corrupt
run directories" with the file and the fix.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from perft_exp.analysis.results.runs import (
    Collection,
    Run,
    mean_or_none,
    merge_seeds,
    ordered_test_sets,
    reference_rates,
)
from perft_exp.evaluation.metrics import AVERAGE_KEYS

SHORT_SET_NAMES = {
    "boolq": "BoolQ",
    "piqa": "PIQA",
    "social_i_qa": "SIQA",
    "hellaswag": "HellaS.",
    "winogrande": "WinoG.",
    "ARC-Easy": "ARC-e",
    "ARC-Challenge": "ARC-c",
    "openbookqa": "OBQA",
    "gsm8k": "GSM8K",
}


def _pct(x: float | None, digits: int = 2, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.{digits}f}" if signed else f"{100 * x:.{digits}f}"


def _with_ci(text: str, ci: tuple[float, float] | None, signed: bool = False) -> str:
    """`text [lo, hi]` (the 95 % interval in %, one decimal) or `text` where there is none."""
    if ci is None:
        return text
    return f"{text} [{_pct(ci[0], 1, signed)}, {_pct(ci[1], 1, signed)}]"


def _ratio(x: float | None) -> str:
    if x is None:
        return "–"
    return "0" if x == 0 else f"{100 * x:.3g}"


def _seeds(run: Run) -> str:
    seeds = [s for s in run.seeds if s is not None]
    return ",".join(map(str, seeds)) if seeds else "–"


def clean_average(run: Run, contaminated: set[str]) -> float | None:
    values = [a for s, a in run.accuracy.items() if s not in contaminated]
    return sum(values) / len(values) if values else None


def csv_rows(collection: Collection) -> list[dict]:
    """One row per run (each seed its own row; merge_seeds makes the Markdown rows)."""
    sets = ordered_test_sets(collection.runs)
    rows = []
    for run in sorted(collection.runs, key=lambda r: (r.model, r.task, r.sort_key())):
        p, avg = run.params, run.averages
        rows.append(
            {
                "model": run.model,
                "task": run.task,
                "train_file": run.train_file,
                "config": run.config,
                "variant": run.variant,
                "num_experts": run.num_experts,
                "top_k": run.top_k,
                "bottleneck": run.bottleneck,
                "alpha": run.perft.get("alpha"),
                "form": run.perft.get("form"),
                "init": run.perft.get("init"),
                "seed": run.seed,
                "trainable": p.get("trainable"),
                "activated_trainable": p.get("activated_trainable"),
                "base_total": p.get("base_total"),
                "base_active": p.get("base_active"),
                "trainable_ratio": p.get("trainable_ratio"),
                "activated_ratio": p.get("activated_ratio"),
                **{s: run.accuracy.get(s) for s in sets},
                "average": run.average,
                **{f"skill:{s}": run.metric("skill", s) for s in sets},
                **{key: avg.get(key) for key in AVERAGE_KEYS},
                "contaminated": ";".join(run.contaminated),
                "steps": run.train.get("steps"),
                "final_loss": run.train.get("final_loss"),
                "best_eval_loss": run.train.get("best_eval_loss"),
                "train_runtime_s": run.train.get("runtime_s"),
                "run": run.name,
                "group": run.group,
                "run_dir": run.run_dir,
            }
        )
    return rows


def write_csv(collection: Collection, path: str | Path) -> Path:
    rows = csv_rows(collection)
    columns = list(dict.fromkeys(k for row in rows for k in row)) if rows else ["model", "task", "config"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


_REFERENCES = (("majority", "*majority label*"), ("chance", "*chance*"))


def _reference_rows(runs: list[Run], sets: list[str], tainted: list[str]) -> list[list[str]]:
    rows = []
    for key, label in _REFERENCES:
        rates = reference_rates(runs, key)
        if all(v is None for v in rates.values()):
            continue
        row = (
            [label, "–", "–", "–"]
            + [_pct(rates.get(s)) for s in sets]
            + [_pct(mean_or_none(list(rates.values())))]
        )
        if tainted:
            row.append(_pct(mean_or_none([v for s, v in rates.items() if s not in tainted])))
        rows.append(row + ["–", "–"])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|",
    ]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown_table(runs: list[Run]) -> str:
    """One model/task: the paper's layout, best value per test-set column in bold (base model excluded).

    Runs that differ only by seed are one row: the mean over seeds and, where the per-question records
    are there, its 95 % bootstrap interval `[lo, hi]`. The majority-label and chance rates close the table.
    """
    runs = merge_seeds(runs)
    sets = ordered_test_sets(runs)
    tainted = sorted({s for r in runs for s in r.contaminated})
    header = ["Config", "r", "Trainable %", "Activated %"]
    header += [SHORT_SET_NAMES.get(s, s) + (" †" if s in tainted else "") for s in sets] + ["Avg."]
    if tainted:
        header.append("Avg. w/o †")
    header += ["Seeds", "Run"]
    tuned = [r for r in runs if r.variant != "none"]
    best = {s: max((r.accuracy.get(s, -1) for r in tuned), default=None) for s in sets}
    best["average"] = max((r.average for r in tuned if r.average is not None), default=None)
    rows = []
    for run in runs:

        def cell(value: float | None, key: str, run: Run = run) -> str:
            text = _pct(value)
            if run.variant != "none" and value is not None and value == best.get(key):
                text = f"**{text}**"
            return _with_ci(text, run.ci.get("accuracy", {}).get(key))

        row = [run.config, "–" if run.bottleneck is None else str(run.bottleneck)]
        row += [_ratio(run.trainable_ratio), _ratio(run.activated_ratio)]
        row += [cell(run.accuracy.get(s), s) for s in sets] + [cell(run.average, "average")]
        if tainted:
            row.append(_pct(clean_average(run, set(tainted))))
        rows.append(row + [_seeds(run), run.name])
    return _table(header, rows + _reference_rows(runs, sets, tainted))


def skill_table(runs: list[Run]) -> str:
    """Skill (accuracy - majority-label rate, points) per test set and on average, best per column in bold,
    with the largest share of one prediction over the sets ("" when no run has the metrics)."""
    runs = merge_seeds(runs)
    if not any(r.metrics for r in runs):
        return ""
    sets = ordered_test_sets(runs)
    header = (
        ["Config", "r"] + [SHORT_SET_NAMES.get(s, s) for s in sets] + ["Avg.", "Top share %", "Seeds", "Run"]
    )
    tuned = [r for r in runs if r.variant != "none"]
    keys = [*sets, "average"]

    def skill(run: Run, key: str) -> float | None:
        return run.averages.get("average_skill") if key == "average" else run.metric("skill", key)

    best = {k: max((v for r in tuned if (v := skill(r, k)) is not None), default=None) for k in keys}
    rows = []
    for run in runs:
        row = [run.config, "–" if run.bottleneck is None else str(run.bottleneck)]
        for key in keys:
            value = skill(run, key)
            text = _pct(value, 1, signed=True)
            if run.variant != "none" and value is not None and value == best[key]:
                text = f"**{text}**"
            row.append(_with_ci(text, run.ci.get("skill", {}).get(key), signed=True))
        row += [_pct(run.averages.get("max_top_prediction_share"), 0), _seeds(run), run.name]
        rows.append(row)
    return _table(header, rows)


def write_markdown(collection: Collection, path: str | Path) -> Path:
    parts = [
        "# Results",
        "",
        "Accuracy in %; ratios are trainable (activated trainable) parameters over the base model's "
        "total (active) parameters, in %. Best value per column in bold. Runs that differ only by seed "
        "are one row: the mean over the seeds listed, with a 95 % bootstrap interval [lo, hi] over "
        "questions and seeds (over questions alone for one seed) where the per-question records are "
        "there. *majority label*: the accuracy of always giving the test set's most common answer; "
        "*chance*: of a uniform guess among each question's options.",
        "",
    ]
    for (model, task), runs in collection.groups().items():
        train_files = sorted({r.train_file for r in runs if r.train_file})
        parts += [
            f"## {model} / {task}",
            "",
            f"Trained on {', '.join(train_files) or '?'}; {len(runs)} runs.",
            "",
        ]
        parts.append(markdown_table(runs))
        tainted = sorted({s for r in runs for s in r.contaminated})
        if tainted:
            parts += [
                "",
                f"† contaminated: the training file overlaps {', '.join(tainted)} (MAWPS problems "
                "in math_10k); `Avg. w/o †` leaves these sets out.",
            ]
        skill = skill_table(runs)
        if skill:
            parts += [
                "",
                f"### Skill: {model} / {task}",
                "",
                "Accuracy minus the majority-label rate, in points: above 0 only when a model beats "
                "every constant answer. *Top share*: the largest share of one prediction over the test "
                "sets (100 = one answer for every question of some set).",
                "",
                skill,
            ]
        parts.append("")
    if collection.failed:
        parts += ["## Failed runs", ""] + [f"- `{d}`: {err}" for d, err in collection.failed] + [""]
    if collection.corrupt:
        parts += ["## Corrupt run directories", "", "Left out of the tables above:", ""]
        parts += [f"- {line}" for line in collection.corrupt] + [""]
    Path(path).write_text("\n".join(parts))
    return Path(path)
