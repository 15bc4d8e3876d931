"""Results tables and figures: every finished run below a directory -> CSV, the paper's table, PNGs.

    python scripts/collect_results.py outputs/runs --out outputs/report

writes into --out:
  results.csv                     one row per run (and one per model/task for the base model), flat columns
  results.md                      per model/task: config (`R (Top2/4)`), r, trainable and activated-trainable
                                  parameter ratios (% of the base model's total / active parameters),
                                  accuracy per test set, average; the base model first; contaminated sets
                                  marked; the majority-label and chance reference rows; then a skill table
                                  (accuracy - majority-label rate, per set and average, and the largest
                                  share of one prediction)
  efficiency-<task>-<model>.png   average accuracy vs activated-trainable ratio (log x), one marker per
                                  variant family, the qv-LoRA baseline as a line
  bottleneck-<task>-<model>.png   average accuracy vs bottleneck r, one line per config

Runs that differ only by seed (`seed=`; run names `...-s1`) form one row / point: the mean over seeds
with a 95 % bootstrap interval over questions and seeds (perft_exp/analysis/bootstrap.py) from the
per-question records `<run>/eval/<set>.jsonl`; a single run gets the interval over questions alone.
The figures draw these intervals as error bars and the majority-label and chance averages as reference
lines. Results written before the skill metrics existed get them from their records, else blanks.

Reads run directories only, through perft_exp/run_dir.py (the run's results, its eval/*.jsonl records, and for
E runs recorded before the resolved run spec its adapter's base-model signature, for the top-k/E label);
trains nothing.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from perft_exp.adapters.variants import FIGURE_ORDER, LORA_BASELINES, REGISTRY, variant_label
from perft_exp.analysis.bootstrap import SetArrays, bootstrap_intervals
from perft_exp.config import seed_suffix
from perft_exp.data.formats import ALL_TEST_SETS
from perft_exp.evaluation.metrics import (
    AVERAGE_KEYS,
    KNOWLEDGE_KEYS,
    average_metrics,
    iter_set_metrics,
    majority_hits,
    read_records,
    record_files,
    set_metrics,
)
from perft_exp.run_dir import RunDir

SHORT_SET_NAMES = {
    "boolq": "BoolQ", "piqa": "PIQA", "social_i_qa": "SIQA", "hellaswag": "HellaS.", "winogrande": "WinoG.",
    "ARC-Easy": "ARC-e", "ARC-Challenge": "ARC-c", "openbookqa": "OBQA", "gsm8k": "GSM8K",
}  # fmt: skip


@dataclass
class Run:
    """One finished run (or the base model of a model/task), flattened for tables and plots."""

    model: str
    task: str
    variant: str
    config: str  # the paper's label: `R (Top2/4)`, `E (Top8/64)`, `D (4)`, `S (1)`, `qv-LoRA`, `base model`
    bottleneck: int | None
    accuracy: dict[str, float]  # test set -> accuracy in [0, 1]
    average: float | None
    num_experts: int | None = None
    top_k: int | None = None
    params: dict = field(default_factory=dict)
    train_file: str = ""
    contaminated: list[str] = field(default_factory=list)
    run_dir: str = ""
    name: str = ""  # run directory name
    train: dict = field(default_factory=dict)
    perft: dict = field(default_factory=dict)
    seed: int | None = None  # the results' `seed` (None: written before seeds were recorded)
    group: str = ""  # the run name without its seed suffix: runs differing only by seed share it
    seeds: list = field(default_factory=list)  # the seeds a merged row averages over (merge_seeds)
    metrics: dict[str, dict] = field(default_factory=dict)  # test set -> skill, majority, chance, ...
    averages: dict = field(default_factory=dict)  # AVERAGE_KEYS of the results: average_skill, ... (or {})
    arrays: dict[str, SetArrays] = field(default_factory=dict, repr=False)  # per-question records
    ci: dict[str, dict] = field(default_factory=dict)  # "accuracy"|"skill" -> set|"average" -> (lo, hi)

    @property
    def family(self) -> str:
        return self.variant

    def metric(self, key: str, test_set: str):
        """A per-set metric (`skill`, `majority`, `chance`, `top_prediction_share`, ...), None if unknown."""
        return self.metrics.get(test_set, {}).get(key)

    @property
    def trainable_ratio(self) -> float | None:
        return self.params.get("trainable_ratio")

    @property
    def activated_ratio(self) -> float | None:
        return self.params.get("activated_ratio")

    def sort_key(self) -> tuple:
        family = FIGURE_ORDER.index(self.variant) if self.variant in FIGURE_ORDER else len(FIGURE_ORDER)
        return (family, self.num_experts or 0, self.top_k or 0, self.config, self.bottleneck or 0, self.name)


def _style(variant: str) -> dict:
    """A variant family's marker and colour in the figures (the registry's; black circles else)."""
    spec = REGISTRY.get(variant)
    return dict(spec.style) if spec and spec.style else dict(marker="o", color="black")


def config_label(perft: dict, base_top_k: int | None = None, base_experts: int | None = None) -> str:
    """The paper's config name from a run's `perft` (E needs the base model's k and E)."""
    return variant_label(perft, base_top_k, base_experts)


def _changes_suffix(changes: list[str] | None) -> str:
    """` {trainer=debug, ...}`: what the run changed from the defaults (the results' `config_changes`), so a
    smoke run never passes for the real one in a table."""
    return f" {{{', '.join(changes)}}}" if changes else ""


def _base_routing(run_dir: Path) -> tuple[int | None, int | None]:
    """(top-k, experts) of the base model, from the saved adapter's signature."""
    meta = RunDir(run_dir).adapter_config()
    if meta is None:
        return None, None
    sig = meta.get("base_signature") or {}
    return sig.get("num_experts_per_tok"), sig.get("num_experts") or sig.get("num_local_experts")


def _accuracies(ev: dict | None) -> tuple[dict[str, float], float | None]:
    ev = ev or {}
    acc = {k: v["accuracy"] for k, v in iter_set_metrics(ev)}
    return acc, ev.get("average")


@dataclass
class _Knowledge:
    metrics: dict[str, dict] = field(default_factory=dict)
    averages: dict = field(default_factory=dict)
    arrays: dict[str, SetArrays] = field(default_factory=dict)


def _knowledge(ev: dict | None, records_dir: Path | None) -> _Knowledge:
    """The skill metrics of an evaluation, from the run's results or else its records, and the records' arrays."""
    ev, out = ev or {}, _Knowledge()
    files = record_files(records_dir) if records_dir is not None and records_dir.is_dir() else {}
    for name, summary in iter_set_metrics(ev):
        if "skill" in summary:
            out.metrics[name] = {k: summary[k] for k in KNOWLEDGE_KEYS if k in summary}
        if name not in files:
            continue
        rows = read_records(files[name])
        out.arrays[name] = SetArrays.from_rows(rows, majority_hits(name, rows))
        if "skill" not in summary:  # written before these metrics existed
            out.metrics[name] = {k: v for k, v in set_metrics(name, rows).items() if k in KNOWLEDGE_KEYS}
    if all(k in ev for k in AVERAGE_KEYS):
        out.averages = {k: ev[k] for k in AVERAGE_KEYS}
    elif out.metrics and all("skill" in m for m in out.metrics.values()):
        out.averages = average_metrics(
            {n: {**m, "accuracy": ev[n]["accuracy"]} for n, m in out.metrics.items()}
        )
    return out


def group_name(name: str, seed: int | None) -> str:
    """`name` without the seed suffix run names carry (`toy-R-n4-k2-r8-s1` -> `toy-R-n4-k2-r8`)."""
    suffix = seed_suffix(seed)
    return re.sub(rf"{re.escape(suffix)}(?=-[0-9a-f]{{6}}$|$)", "", name, count=1) if suffix else name


def run_from_results(results: dict, run_dir: Path) -> Run:
    perft = results.get("perft") or {"variant": results.get("variant", "none")}
    acc, average = _accuracies(results.get("eval"))
    known = _knowledge(results.get("eval"), RunDir(run_dir).records)
    spec = REGISTRY.get(perft["variant"])
    # E's N and K are the model's: a resolved run records them, an older one left them null
    unresolved = spec is not None and any(perft.get(k) is None for k in spec.from_model)
    top_k, experts = _base_routing(run_dir) if unresolved else (None, None)
    seed = results.get("seed")
    return Run(
        model=results.get("model", "?"),
        task=results.get("task", "?"),
        variant=perft["variant"],
        config=config_label(perft, top_k, experts) + _changes_suffix(results.get("config_changes")),
        bottleneck=perft.get("bottleneck") if perft["variant"] != "none" else None,
        accuracy=acc,
        average=average,
        num_experts=perft.get("num_experts") if spec and "num_experts" in spec.knobs else None,
        top_k=perft.get("top_k") if spec and "top_k" in spec.knobs else None,
        params=results.get("params") or {},
        train_file=results.get("train_file") or "",
        contaminated=list(results.get("contaminated_test_sets") or []),
        run_dir=str(run_dir),
        name=run_dir.name,
        train=results.get("train") or {},
        perft=perft,
        seed=seed,
        group=group_name(run_dir.name, seed),
        seeds=[seed],
        metrics=known.metrics,
        averages=known.averages,
        arrays=known.arrays,
    )


def base_run(results: dict, run_dir: Path) -> Run | None:
    """The untuned base model's row from a run's `base_eval` (None when the run has none)."""
    if not results.get("base_eval"):
        return None
    acc, average = _accuracies(results["base_eval"])
    records = results.get("base_eval_records")  # the shared cache's records, relative to the launch directory
    known = _knowledge(results["base_eval"], Path(records) if records else None)
    return Run(
        model=results.get("model", "?"), task=results.get("task", "?"), variant="none", config="base model",
        bottleneck=None, accuracy=acc, average=average, train_file=results.get("train_file") or "",
        contaminated=list(results.get("contaminated_test_sets") or []), run_dir=str(run_dir), name="(base_eval)",
        group="(base_eval)", metrics=known.metrics, averages=known.averages, arrays=known.arrays,
    )  # fmt: skip


@dataclass
class Collection:
    runs: list[Run]  # finished runs, and one base-model row per (model, task) where any run has base_eval
    failed: list[tuple[str, str]]  # (run dir, error) of runs in state "failed" (a failure record, no results)

    def groups(self) -> dict[tuple[str, str], list[Run]]:
        out: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for run in sorted(self.runs, key=lambda r: (r.model, r.task, r.sort_key())):
            out[(run.model, run.task)].append(run)
        return dict(out)


def collect(root: str | Path, pattern: str = "*") -> Collection:
    """Every run below `root` (run directory names matching `pattern`, e.g. "toy-*")."""
    runs, failed, bases = [], [], {}
    for found in RunDir.find(root, pattern):
        results = found.read_results()
        if results is None:
            failed.append((str(found.path), found.read_failure()))
            continue
        if "variant" not in results and "perft" not in results:
            continue  # not a train.py run's results
        run = run_from_results(results, found.path)
        runs.append(run)
        base = base_run(results, found.path)
        if base is not None:
            bases.setdefault((base.model, base.task), base)
    have_base_run = {(r.model, r.task) for r in runs if r.variant == "none"}
    runs += [b for key, b in bases.items() if key not in have_base_run]
    return Collection(runs, failed)


def ordered_test_sets(runs: Iterable[Run]) -> list[str]:
    names = {name for run in runs for name in run.accuracy}
    known = [s for s in ALL_TEST_SETS if s in names]
    return known + sorted(names - set(known))


# --- seeds ------------------------------------------------------------------------------------------


def _seed_key(run: Run) -> tuple:
    """Runs with equal keys differ only by seed (their names agree once the seed suffix is dropped)."""
    perft = json.dumps(run.perft, sort_keys=True, default=str)
    return (run.model, run.task, run.variant, run.config, run.bottleneck, run.train_file, run.group, perft)


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _merged_metrics(members: list[Run], test_set: str) -> dict:
    first = members[0].metrics.get(test_set, {})
    tops = {json.dumps(m.metric("top_prediction", test_set)) for m in members}
    return {
        "chance": first.get("chance"),
        "majority": first.get("majority"),
        "majority_label": first.get("majority_label"),
        "skill": _mean([m.metric("skill", test_set) for m in members]),
        "top_prediction": first.get("top_prediction") if len(tops) == 1 else None,  # None: seeds disagree
        "top_prediction_share": _mean([m.metric("top_prediction_share", test_set) for m in members]),
    }


def _intervals(members: list[Run]) -> dict[str, dict[str, tuple[float, float]]]:
    """Bootstrap intervals over the sets every member has records of ("average" only if that is all sets)."""
    if not all(m.arrays for m in members):
        return {}
    ci = bootstrap_intervals([m.arrays for m in members])
    sets = {s for m in members for s in m.accuracy}
    if not sets <= set(ci["accuracy"]):
        for key in ci:
            ci[key].pop("average", None)
    return ci


def _merge(members: list[Run]) -> Run:
    """One row for runs that differ only by seed: means over seeds, bootstrap intervals."""
    members = sorted(members, key=lambda r: (r.seed is None, r.seed or 0, r.name))
    first, ci = members[0], _intervals(members)
    if len(members) == 1:
        return replace(first, seeds=[first.seed], arrays={}, ci=ci)
    sets = [s for s in ordered_test_sets(members) if all(s in m.accuracy for m in members)]
    accuracy = {s: _mean([m.accuracy[s] for m in members]) for s in sets}
    metrics = {s: _merged_metrics(members, s) for s in sets if all(m.metrics.get(s) for m in members)}
    averages = {}
    if sets and len(metrics) == len(sets) and all(m["skill"] is not None for m in metrics.values()):
        averages = average_metrics({s: {**metrics[s], "accuracy": accuracy[s]} for s in sets})
    return replace(
        first, accuracy=accuracy, average=_mean([m.average for m in members]), name=first.group,
        seeds=[m.seed for m in members], metrics=metrics, averages=averages, arrays={}, ci=ci,
    )  # fmt: skip


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by everything but their seed, in first-seen order."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[_seed_key(run)].append(run)
    return list(groups.values())


def merge_seeds(runs: list[Run]) -> list[Run]:
    """Runs that differ only by seed merged into one (mean over seeds, 95 % intervals), order kept."""
    return [_merge(members) for members in seed_groups(runs)]


# --- tables -----------------------------------------------------------------------------------------


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
        rows.append({
            "model": run.model, "task": run.task, "train_file": run.train_file, "config": run.config,
            "variant": run.variant, "num_experts": run.num_experts, "top_k": run.top_k, "bottleneck": run.bottleneck,
            "alpha": run.perft.get("alpha"), "form": run.perft.get("form"), "init": run.perft.get("init"),
            "seed": run.seed, "trainable": p.get("trainable"), "activated_trainable": p.get("activated_trainable"),
            "base_total": p.get("base_total"), "base_active": p.get("base_active"),
            "trainable_ratio": p.get("trainable_ratio"), "activated_ratio": p.get("activated_ratio"),
            **{s: run.accuracy.get(s) for s in sets}, "average": run.average,
            **{f"skill:{s}": run.metric("skill", s) for s in sets},
            **{key: avg.get(key) for key in AVERAGE_KEYS},
            "contaminated": ";".join(run.contaminated), "steps": run.train.get("steps"),
            "final_loss": run.train.get("final_loss"), "best_eval_loss": run.train.get("best_eval_loss"),
            "train_runtime_s": run.train.get("runtime_s"), "run": run.name, "group": run.group,
            "run_dir": run.run_dir,
        })  # fmt: skip
    return rows


def write_csv(collection: Collection, path: str | Path) -> Path:
    rows = csv_rows(collection)
    columns = list(dict.fromkeys(k for row in rows for k in row)) if rows else ["model", "task", "config"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def reference_rates(runs: list[Run], key: str) -> dict[str, float | None]:
    """Per test set, a property of the test set itself (`majority` or `chance`), from the first run that has it."""
    out: dict[str, float | None] = {}
    for test_set in ordered_test_sets(runs):
        out[test_set] = next(
            (r.metric(key, test_set) for r in runs if r.metric(key, test_set) is not None), None
        )
    return out


def reference_averages(runs: list[Run]) -> dict[str, float | None]:
    """The majority-label and chance averages over the test sets (None where a set lacks the rate)."""
    return {key: _mean(list(reference_rates(runs, key).values())) for key in ("majority", "chance")}


_REFERENCES = (("majority", "*majority label*"), ("chance", "*chance*"))


def _reference_rows(runs: list[Run], sets: list[str], tainted: list[str]) -> list[list[str]]:
    rows = []
    for key, label in _REFERENCES:
        rates = reference_rates(runs, key)
        if all(v is None for v in rates.values()):
            continue
        row = (
            [label, "–", "–", "–"] + [_pct(rates.get(s)) for s in sets] + [_pct(_mean(list(rates.values())))]
        )
        if tainted:
            row.append(_pct(_mean([v for s, v in rates.items() if s not in tainted])))
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
    parts = ["# Results", "",
             "Accuracy in %; ratios are trainable (activated trainable) parameters over the base model's "
             "total (active) parameters, in %. Best value per column in bold. Runs that differ only by seed "
             "are one row: the mean over the seeds listed, with a 95 % bootstrap interval [lo, hi] over "
             "questions and seeds (over questions alone for one seed) where the per-question records are "
             "there. *majority label*: the accuracy of always giving the test set's most common answer; "
             "*chance*: of a uniform guess among each question's options.", ""]  # fmt: skip
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
            parts += ["", f"† contaminated: the training file overlaps {', '.join(tainted)} (MAWPS problems in "
                          "math_10k); `Avg. w/o †` leaves these sets out."]  # fmt: skip
        skill = skill_table(runs)
        if skill:
            parts += ["", f"### Skill: {model} / {task}", "",
                      "Accuracy minus the majority-label rate, in points: above 0 only when a model beats "
                      "every constant answer. *Top share*: the largest share of one prediction over the test "
                      "sets (100 = one answer for every question of some set).", "", skill]  # fmt: skip
        parts.append("")
    if collection.failed:
        parts += ["## Failed runs", ""] + [f"- `{d}`: {err}" for d, err in collection.failed] + [""]
    Path(path).write_text("\n".join(parts))
    return Path(path)


# --- figures ----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax, n_entries: int) -> None:
    if n_entries > 8:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=9, loc="best")


def _yerr(members: list[Run]) -> list[list[float]] | None:
    """Asymmetric error bars (%) from the average's 95 % interval; None when no member has one."""
    cis = [m.ci.get("accuracy", {}).get("average") for m in members]
    if all(ci is None for ci in cis):
        return None
    below = [0.0 if ci is None else 100 * max(m.average - ci[0], 0.0) for m, ci in zip(members, cis)]
    above = [0.0 if ci is None else 100 * max(ci[1] - m.average, 0.0) for m, ci in zip(members, cis)]
    return [below, above]


def _reference_lines(ax, runs: list[Run]) -> int:
    """The majority-label and chance averages as horizontal lines; returns how many were drawn."""
    refs = reference_averages(runs)
    drawn = 0
    for key, label, style in (("majority", "majority label", "--"), ("chance", "chance", "-.")):
        if refs[key] is not None:
            ax.axhline(100 * refs[key], color="0.45", linestyle=style, linewidth=1.1, label=label)
            drawn += 1
    return drawn


def plot_efficiency(runs: list[Run], path: str | Path, title: str = "") -> Path:
    """Average accuracy vs activated-trainable-parameter ratio: the paper's efficiency picture.

    Runs that differ only by seed are one point (their mean) with its 95 % interval as an error bar.
    """
    fig = efficiency_figure(runs, title)
    fig.savefig(path, dpi=130)
    _pyplot().close(fig)
    return Path(path)


def _declutter(fig, labels: list) -> None:
    """Move point labels down, a line at a time, until none overlaps an earlier one (points of nearly equal
    cost and accuracy would otherwise print their labels over each other)."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for text in labels:
        for _ in range(len(labels)):
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = text.get_position()  # (offset points) from its point
            text.set_position((x, y - 9))
        placed.append(text.get_window_extent(renderer))


def efficiency_figure(runs: list[Run], title: str = ""):
    """The figure plot_efficiency saves (its point labels are the axes' texts)."""
    plt = _pyplot()
    from matplotlib import ticker

    runs = merge_seeds(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_family: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.average is not None and run.variant != "none" and run.activated_ratio:
            by_family[run.variant].append(run)
    entries, labels = 0, []
    for family, members in sorted(by_family.items(), key=lambda kv: FIGURE_ORDER.index(kv[0])):
        style = _style(family)
        members = sorted(members, key=lambda r: r.activated_ratio)
        x = [100 * r.activated_ratio for r in members]
        y = [100 * r.average for r in members]
        label = REGISTRY[family].legend
        yerr = _yerr(members)
        if family in LORA_BASELINES:  # MoE-agnostic / -aware LoRA baselines: a line over their ranks
            ax.errorbar(x, y, yerr=yerr, linestyle="-" if family == "qv_lora" else "--", linewidth=1.5,
                        markersize=8, capsize=3, label=label, **style)  # fmt: skip
        else:
            if yerr is not None:
                ax.errorbar(
                    x, y, yerr=yerr, fmt="none", ecolor=style["color"], elinewidth=1, capsize=3, alpha=0.7
                )
            ax.scatter(
                x, y, s=36, label=label, alpha=0.85, edgecolors="black", linewidths=0.4, zorder=3, **style
            )
        entries += 1
        if len(runs) <= 30:
            for r, xi, yi in zip(members, x, y):
                text = f"{r.config.split(' [')[0].split(' {')[0].replace(' (', '(')} r{r.bottleneck}"
                labels.append(ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7,
                                          color="0.3"))  # fmt: skip
    base = next((r for r in runs if r.variant == "none" and r.average is not None), None)
    if base is not None:
        ax.axhline(100 * base.average, color="black", linestyle=":", linewidth=1.2, label="base model")
        entries += 1
    entries += _reference_lines(ax, runs)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.margins(x=0.12)
    ax.set_xlabel("activated trainable parameters / active base parameters (%)")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(title or "accuracy vs activated trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    if entries:
        _legend(ax, entries)
    fig.tight_layout()
    _declutter(fig, labels)
    return fig


def plot_bottleneck(runs: list[Run], path: str | Path, title: str = "") -> Path:
    """Average accuracy vs bottleneck r, one line per config (R (Top2/4), S (1), qv-LoRA, ...).

    Runs that differ only by seed are one point (their mean) with its 95 % interval as an error bar.
    """
    plt = _pyplot()
    from matplotlib import ticker

    runs = merge_seeds(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_config: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.average is not None and run.bottleneck:
            by_config[run.config].append(run)
    configs = sorted(by_config, key=lambda c: by_config[c][0].sort_key())
    # tab20 without its greys (kept for the baseline), so a grid's ~20 configs get distinct colours.
    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]
    tuned = [c for c in configs if by_config[c][0].variant not in LORA_BASELINES]
    per_family = Counter(by_config[c][0].variant for c in configs)
    # Error bars of configs at the same r are dodged apart (a few hundredths of an octave each).
    step = min(0.04, 0.3 / max(len(configs), 1))
    for n, config in enumerate(configs):
        members = sorted(by_config[config], key=lambda r: r.bottleneck)
        dodge = 2 ** (step * (n - (len(configs) - 1) / 2))
        variant = members[0].variant
        style = _style(variant)
        if variant in LORA_BASELINES:
            color, linestyle = style["color"], "--"
        elif per_family[variant] == 1:  # one config of its family: the family's colour, as in the other plot
            color, linestyle = style["color"], "-"
        else:
            i = tuned.index(config)
            color, linestyle = palette[i % len(palette)], "-" if i < len(palette) else "-."
        x, y = [r.bottleneck * dodge for r in members], [100 * r.average for r in members]
        ax.errorbar(x, y, yerr=_yerr(members), marker=style["marker"], linestyle=linestyle, color=color,
                    capsize=3, label=config)  # fmt: skip
    base = next((r for r in runs if r.variant == "none" and r.average is not None), None)
    if base is not None:
        ax.axhline(100 * base.average, color="black", linestyle=":", linewidth=1.2, label="base model")
    references = _reference_lines(ax, runs)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("bottleneck size r")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(title or "accuracy vs bottleneck size")
    ax.grid(True, which="both", alpha=0.3)
    if configs:
        _legend(ax, len(configs) + (base is not None) + references)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


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
