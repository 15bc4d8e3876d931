"""The finished runs below a directory, as rows for the results tables and figures.

Reads run directories only, through perft_exp/run_dir.py (the run's results, its eval/*.jsonl records, and for
E runs recorded before the resolved run spec its adapter's base-model signature, for the top-k/E label);
trains nothing. Results written before the skill metrics existed get them from their records, else blanks. A
run directory with an unreadable record (state "corrupt") is left out and listed with the file and the fix.

Runs that differ only by seed (`seed=`; run names `...-s1`) merge into one row: the mean over seeds with a
95 % bootstrap interval over questions and seeds (perft_exp/analysis/bootstrap.py) from the per-question
records `<run>/eval/<set>.jsonl`; a single run gets the interval over questions alone.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from perft_exp.adapters.variants import FIGURE_ORDER, REGISTRY, variant_label
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
        """The variant's name (the figures' marker and colour key)."""
        return self.variant

    def metric(self, key: str, test_set: str):
        """A per-set metric (`skill`, `majority`, `chance`, `top_prediction_share`, ...), None if unknown."""
        return self.metrics.get(test_set, {}).get(key)

    @property
    def trainable_ratio(self) -> float | None:
        """Trainable over the base model's total parameters (a fraction; the tables show %)."""
        return self.params.get("trainable_ratio")

    @property
    def activated_ratio(self) -> float | None:
        """Activated trainable over the base model's active parameters (a fraction; counting's bound)."""
        return self.params.get("activated_ratio")

    def sort_key(self) -> tuple:
        """The tables' row order: variant family, N, K, config, bottleneck, name."""
        family = FIGURE_ORDER.index(self.variant) if self.variant in FIGURE_ORDER else len(FIGURE_ORDER)
        return (family, self.num_experts or 0, self.top_k or 0, self.config, self.bottleneck or 0, self.name)


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
    """The skill metrics of an evaluation, from the run's results or else its records, and the records'
    arrays."""
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
    """A table row from a run's results.json (and its per-question records, where present)."""
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
        model=results.get("model", "?"),
        task=results.get("task", "?"),
        variant="none",
        config="base model",
        bottleneck=None,
        accuracy=acc,
        average=average,
        train_file=results.get("train_file") or "",
        contaminated=list(results.get("contaminated_test_sets") or []),
        run_dir=str(run_dir),
        name="(base_eval)",
        group="(base_eval)",
        metrics=known.metrics,
        averages=known.averages,
        arrays=known.arrays,
    )


@dataclass
class Collection:
    """What `collect` found below a directory: the runs, the failed ones and the corrupt ones."""

    runs: list[Run]  # finished runs, and one base-model row per (model, task) where any run has base_eval
    failed: list[tuple[str, str]]  # (run dir, error) of runs in state "failed" (a failure record, no results)
    corrupt: list[str] = field(default_factory=list)  # an unreadable file of a run, and the fix (CorruptFile)

    def groups(self) -> dict[tuple[str, str], list[Run]]:
        """The runs by (model, task), each list in table order."""
        out: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for run in sorted(self.runs, key=lambda r: (r.model, r.task, r.sort_key())):
            out[(run.model, run.task)].append(run)
        return dict(out)


def collect(root: str | Path, pattern: str = "*") -> Collection:
    """Every run below `root` (run directory names matching `pattern`, e.g. "toy-*")."""
    runs, failed, corrupt, bases = [], [], [], {}
    for found in RunDir.find(root, pattern):
        bad = found.corrupt()
        if bad is not None:
            corrupt.append(str(bad))
            continue
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
    return Collection(runs, failed, corrupt)


def ordered_test_sets(runs: Iterable[Run]) -> list[str]:
    """The test sets the runs have, in the paper's order (unknown ones last, sorted)."""
    names = {name for run in runs for name in run.accuracy}
    known = [s for s in ALL_TEST_SETS if s in names]
    return known + sorted(names - set(known))


# --- seeds ------------------------------------------------------------------------------------------


def _seed_key(run: Run) -> tuple:
    """Runs with equal keys differ only by seed (their names agree once the seed suffix is dropped)."""
    perft = json.dumps(run.perft, sort_keys=True, default=str)
    return (run.model, run.task, run.variant, run.config, run.bottleneck, run.train_file, run.group, perft)


def mean_or_none(values: list) -> float | None:
    """The mean, None when there is no value or one is unknown."""
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _merged_metrics(members: list[Run], test_set: str) -> dict:
    first = members[0].metrics.get(test_set, {})
    tops = {json.dumps(m.metric("top_prediction", test_set)) for m in members}
    return {
        "chance": first.get("chance"),
        "majority": first.get("majority"),
        "majority_label": first.get("majority_label"),
        "skill": mean_or_none([m.metric("skill", test_set) for m in members]),
        "top_prediction": first.get("top_prediction") if len(tops) == 1 else None,  # None: seeds disagree
        "top_prediction_share": mean_or_none([m.metric("top_prediction_share", test_set) for m in members]),
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
    accuracy = {s: mean_or_none([m.accuracy[s] for m in members]) for s in sets}
    metrics = {s: _merged_metrics(members, s) for s in sets if all(m.metrics.get(s) for m in members)}
    averages = {}
    if sets and len(metrics) == len(sets) and all(m["skill"] is not None for m in metrics.values()):
        averages = average_metrics({s: {**metrics[s], "accuracy": accuracy[s]} for s in sets})
    return replace(
        first,
        accuracy=accuracy,
        average=mean_or_none([m.average for m in members]),
        name=first.group,
        seeds=[m.seed for m in members],
        metrics=metrics,
        averages=averages,
        arrays={},
        ci=ci,
    )


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by everything but their seed, in first-seen order."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[_seed_key(run)].append(run)
    return list(groups.values())


def merge_seeds(runs: list[Run]) -> list[Run]:
    """Runs that differ only by seed merged into one (mean over seeds, 95 % intervals), order kept."""
    return [_merge(members) for members in seed_groups(runs)]


# --- the test sets' reference rates ----------------------------------------------------------------


def reference_rates(runs: list[Run], key: str) -> dict[str, float | None]:
    """Per test set, a property of the test set itself (`majority` or `chance`), from the first run that has
    it."""
    out: dict[str, float | None] = {}
    for test_set in ordered_test_sets(runs):
        out[test_set] = next(
            (r.metric(key, test_set) for r in runs if r.metric(key, test_set) is not None), None
        )
    return out


def reference_averages(runs: list[Run]) -> dict[str, float | None]:
    """The majority-label and chance averages over the test sets (None where a set lacks the rate)."""
    return {key: mean_or_none(list(reference_rates(runs, key).values())) for key in ("majority", "chance")}
