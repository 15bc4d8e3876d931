"""Results tables and figures: every finished run below a directory -> CSV, the paper's table, PNGs.

    python scripts/collect_results.py outputs/runs --out outputs/report

writes into --out:
  results.csv                     one row per run (and one per model/task for the base model), flat columns
  results.md                      per model/task: the paper's table and the skill table (tables.py)
  efficiency-<task>-<model>.png   average accuracy vs activated-trainable ratio (figures.py)
  bottleneck-<task>-<model>.png   average accuracy vs bottleneck r, one line per config (figures.py)

The runs are read by runs.py (old result formats included; seeds merged into one row / point with a 95 %
bootstrap interval); trains nothing.
"""

from __future__ import annotations

from pathlib import Path

from perft_exp.analysis.results.figures import plot_bottleneck, plot_efficiency
from perft_exp.analysis.results.runs import collect
from perft_exp.analysis.results.tables import write_csv, write_markdown


def write_report(root: str | Path, out: str | Path, pattern: str = "*") -> dict[str, Path]:
    """Collect the runs below `root` into `out`: results.csv, results.md and two PNGs per model/task."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    collection = collect(root, pattern)
    files = {
        "csv": write_csv(collection, out / "results.csv"),
        "md": write_markdown(collection, out / "results.md"),
    }
    for (model, task), runs in collection.groups().items():
        title = f"{model} / {task}"
        files[f"efficiency/{task}/{model}"] = plot_efficiency(
            runs, out / f"efficiency-{task}-{model}.png", title
        )
        files[f"bottleneck/{task}/{model}"] = plot_bottleneck(
            runs, out / f"bottleneck-{task}-{model}.png", title
        )
    return files
