"""Paired comparisons: for every two configurations of a model and task, A - B in average skill with a paired
95 % bootstrap interval, and whether it excludes 0.

    # writes paired.csv and paired.md too:
    python scripts/collect_results.py outputs/runs --out outputs/report

Configurations are the rows of results.md (runs that differ only by seed). Two of them are paired when they
ran the same seeds on the same questions; the interval then resamples seeds and questions once for both
(perft_exp/analysis/bootstrap.py, `paired_difference`). Pairs that cannot be paired (other seeds, missing
per-question records) are listed as such. The frozen base model is left out: it has no seeds.

Reads the runs collected by perft_exp/analysis/results/runs.py; trains nothing.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from perft_exp.analysis.bootstrap import PairedDifference, paired_difference
from perft_exp.analysis.results.runs import Collection, Run, seed_groups


@dataclass(frozen=True)
class Pair:
    """Configuration `a` against configuration `b` of one model and task (`result` None: not paired)."""

    model: str
    task: str
    a: str  # the configuration's label with its bottleneck: `R (Top2/4) r8`
    b: str
    seeds: tuple
    result: PairedDifference | None
    why_not: str = ""

    def verdict(self) -> str:
        """`A > B` or `A < B`, `no difference shown` (the interval holds 0), or `not paired`."""
        if self.result is None:
            return "not paired"
        if not self.result.excludes_zero:
            return "no difference shown"
        return f"{self.a} > {self.b}" if self.result.difference > 0 else f"{self.a} < {self.b}"


def _label(run: Run) -> str:
    return run.config if run.bottleneck is None else f"{run.config} r{run.bottleneck}"


def _seeds(members: list[Run]) -> tuple:
    return tuple(m.seed for m in members)


def compare(runs: list[Run]) -> list[Pair]:
    """Every pair of the configurations among `runs` (one model and task), in table order."""
    groups = [
        sorted(g, key=lambda r: (r.seed is None, r.seed or 0))
        for g in seed_groups(sorted(runs, key=Run.sort_key))
        if g[0].variant != "none"
    ]
    pairs = []
    for a, b in combinations(groups, 2):
        common = dict(model=a[0].model, task=a[0].task, a=_label(a[0]), b=_label(b[0]), seeds=_seeds(a))
        if _seeds(a) != _seeds(b):
            pairs.append(Pair(**common, result=None, why_not=f"seeds {_seeds(a)} against {_seeds(b)}"))
            continue
        if not all(m.arrays for m in a + b):
            pairs.append(Pair(**common, result=None, why_not="per-question records missing"))
            continue
        result = paired_difference([m.arrays for m in a], [m.arrays for m in b])
        pairs.append(Pair(**common, result=result, why_not="" if result else "other test sets or questions"))
    return pairs


def all_pairs(collection: Collection) -> list[Pair]:
    """Every pair of configurations, per model and task of the collection."""
    return [pair for runs in collection.groups().values() for pair in compare(runs)]


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def write_paired_csv(pairs: list[Pair], path: str | Path) -> Path:
    """The pairs as CSV at `path` (paired.csv); the path."""
    columns = ["model", "task", "a", "b", "seeds", "difference", "lo", "hi", "excludes_zero", "verdict"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for p in pairs:
            r = p.result
            writer.writerow(
                {
                    "model": p.model,
                    "task": p.task,
                    "a": p.a,
                    "b": p.b,
                    "seeds": ";".join(str(s) for s in p.seeds),
                    "difference": None if r is None else r.difference,
                    "lo": None if r is None else r.lo,
                    "hi": None if r is None else r.hi,
                    "excludes_zero": None if r is None else r.excludes_zero,
                    "verdict": p.verdict() if r else f"not paired: {p.why_not}",
                }
            )
    return Path(path)


def paired_markdown(pairs: list[Pair]) -> str:
    """The pairs as markdown (paired.md): a table per model and task, then the pairs not paired and why."""
    parts = [
        "# Paired comparisons",
        "",
        "A - B in average skill over the test sets (points; equal to the difference in average accuracy), "
        "with a paired 95 % bootstrap interval: both configurations ran the same seeds on the same "
        "questions, and each resample draws seeds and questions once for both. **Bold**: the interval "
        "excludes 0.",
        "",
    ]
    by_group: dict[tuple[str, str], list[Pair]] = {}
    for p in pairs:
        by_group.setdefault((p.model, p.task), []).append(p)
    if not by_group:
        parts.append("No two configurations to compare.")
    for (model, task), group in by_group.items():
        paired = [p for p in group if p.result is not None]
        parts += [f"## {model} / {task}", ""]
        if paired:
            parts += ["| A | B | A - B | 95 % interval | verdict |", "|---|---|---:|---|---|"]
            for p in paired:
                r = p.result
                diff, ci = _points(r.difference), f"[{_points(r.lo)}, {_points(r.hi)}]"
                if r.excludes_zero:
                    diff, ci = f"**{diff}**", f"**{ci}**"
                parts.append(f"| {p.a} | {p.b} | {diff} | {ci} | {p.verdict()} |")
            shown = sum(p.result.excludes_zero for p in paired)
            parts += ["", f"{shown} of {len(paired)} differences exclude 0."]
        unpaired = [p for p in group if p.result is None]
        if unpaired:
            parts += ["", "Not paired:", ""] + [f"- {p.a} / {p.b}: {p.why_not}" for p in unpaired]
        parts.append("")
    return "\n".join(parts)


def write_paired(collection: Collection, out: str | Path) -> dict[str, Path]:
    """paired.csv and paired.md in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = all_pairs(collection)
    md = out / "paired.md"
    md.write_text(paired_markdown(pairs))
    return {"paired_csv": write_paired_csv(pairs, out / "paired.csv"), "paired_md": md}
