r"""Routing analysis of finished runs: PEFT-expert loads, the vector picture, R's router vs the frozen router.

    python scripts/analyze_routing.py \
        run_dir=outputs/runs/synthetic_commonsense/tiny_olmoe/R-n4-k2-r16-adapter
    python scripts/analyze_routing.py run_dir=outputs/runs/synthetic_commonsense runs='toy-*' \
        out=outputs/routing/toy
    python scripts/analyze_routing.py run_dir=<run a> run_dir=<run b> batches=8 batch_size=16 device=cuda

Arguments are key=value:
  run_dir     a finished run directory with an adapter, or a parent searched for them; repeatable
  out         where everything goes (default outputs/routing)
  runs        only run directories whose name matches this glob (default *), e.g. runs='toy-*'
  batches, batch_size   test prompts run through the model (default 4 x 16), taken round-robin from the
              task's test sets; only the prompt tokens are routed (one forward pass, no generation)
  device      default: cuda when available
  forward     false: skip the data pass (router angles and the vector picture need only the weights)
  --strict    exit 1 when a run directory is corrupt (an unreadable record: listed with the fix and skipped)

Per run with PERFT layers, into <out>/<task>/<model>/<run>/: load.png (per-layer PEFT-expert load, R and E),
vectors.png (router rows and expert keys in the PCA plane of the frozen FFN experts' keys; definitions in
perft_exp/analysis/routing.py) and routing.json. Across runs, into <out>/: routing_stats.{csv,md} and
principal_angles.{csv,md} (R's W_r against the frozen router W_g, per layer, with a random-router reference).
LoRA-baseline runs have no PEFT router or experts and are listed as skipped.
"""

from __future__ import annotations

import csv
import json
import sys
from itertools import zip_longest
from pathlib import Path

from perft_exp.adapters.variants import PERFT_VARIANTS
from perft_exp.cli import one_line
from perft_exp.data.prompts import build_prompt
from perft_exp.optional_imports import hide_unused
from perft_exp.run_dir import RunDir

DEFAULTS = {
    "out": "outputs/routing",
    "runs": "*",
    "batches": "4",
    "batch_size": "16",
    "device": None,
    "forward": "true",
}


def parse_args(argv: list[str]) -> tuple[list[Path], dict]:
    run_dirs, opts = [], {**DEFAULTS, "strict": "--strict" in argv}
    for arg in (a for a in argv if a != "--strict"):
        key, sep, value = arg.partition("=")
        if not sep:  # a bare path is a run_dir
            key, value = "run_dir", arg
        if key == "run_dir":
            run_dirs.append(Path(value))
        elif key in opts:
            opts[key] = value
        else:
            raise SystemExit(f"error: unknown argument {key!r}; known: run_dir, {', '.join(DEFAULTS)}")
    if not run_dirs:
        raise SystemExit("error: give at least one run_dir=<dir>")
    return run_dirs, opts


def find_runs(paths: list[Path], pattern: str = "*") -> list[Path]:
    """Finished run directories with a saved adapter at or below each path, named like `pattern`."""
    runs = [
        run.path
        for path in paths
        for run in RunDir.find(path, pattern)
        if run.state() == "finished" and run.has_adapter()
    ]
    return list(dict.fromkeys(runs))


def find_corrupt(paths: list[Path], pattern: str = "*") -> list[str]:
    """The unreadable file of each corrupt run directory at or below the paths, with its fix."""
    found = (run.corrupt() for path in paths for run in RunDir.find(path, pattern))
    return list(dict.fromkeys(str(bad) for bad in found if bad is not None))


def test_prompts(task_cfg, n: int) -> list[str]:
    """n prompts taken round-robin over the test sets, so every set is represented."""
    from perft_exp.data.task import load_task_data

    tests = load_task_data(task_cfg).tests
    mixed = [r for group in zip_longest(*tests.values()) for r in group if r is not None]
    return [build_prompt(r["instruction"], r.get("input", "")) for r in mixed[:n]]


def analyze_run(run_dir: Path, opts: dict) -> dict:
    import torch

    from perft_exp.adapters.io import load_adapter, read_adapter_config
    from perft_exp.adapters.routing_stats import router_angles, track_routing
    from perft_exp.analysis.routing import plot_loads, plot_vectors, vector_picture
    from perft_exp.models.arch import NotApplicable
    from perft_exp.models.loading import load_model

    run = RunDir(run_dir)
    cfg = run.load_spec()
    meta = read_adapter_config(run.adapter)
    info = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "model": cfg.model.name,
        "task": cfg.task.name,
        "variant": meta["variant"],
    }
    if meta["variant"] not in PERFT_VARIANTS:
        return {**info, "skipped": f"variant {meta['variant']} has no PEFT router or experts"}
    device = opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(cfg.model, device=device)
    model = load_adapter(model, run.adapter).eval()
    info["config"] = model.perft_config.run_label()
    out = Path(opts["out"]) / info["task"] / info["model"] / info["run"]
    out.mkdir(parents=True, exist_ok=True)

    info["layers"] = []
    if opts["forward"].lower() == "true":
        batch_size = int(opts["batch_size"])
        prompts = test_prompts(cfg.task, int(opts["batches"]) * batch_size)
        tokenizer.padding_side = "left"
        with torch.no_grad(), track_routing(model) as stats:
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(
                    prompts[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=cfg.task.cutoff_len,
                )
                model(**{k: v.to(device) for k, v in enc.items()})
        info["layers"] = stats.per_layer()
        info["prompts"] = len(prompts)
        if info["layers"]:
            plot_loads(
                info["layers"], out / "load.png", f"{info['config']}: PEFT-expert load ({run_dir.name})"
            )
    try:
        info["angles"] = router_angles(model)
        plot_vectors(
            vector_picture(model),
            out / "vectors.png",
            f"{info['config']} ({run_dir.name}): router rows and expert keys in the FFN keys' PCA plane",
        )
    except NotApplicable as e:  # the family has no router matrix or no gate/up split: say so, keep the loads
        info["angles"], info["vectors"] = None, f"not applicable: {e}"
        print(f"{run_dir.name}: router angles and vector picture not applicable: {e}", file=sys.stderr)
    (out / "routing.json").write_text(json.dumps(info, indent=2) + "\n")
    info["out"] = str(out)
    return info


def _md(rows: list[dict], columns: list[str]) -> str:
    def fmt(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _write(rows: list[dict], columns: list[str], stem: Path, title: str, note: str) -> None:
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".md").write_text(f"# {title}\n\n{note}\n\n{_md(rows, columns)}\n")


# The columns of the two tables: which run, then the per-layer statistics, then the list column.
RUN_COLUMNS = ("run", "config", "model", "task")
ANGLE_MEANS = ("min_deg", "mean_deg", "max_deg", "random_mean_deg")  # averaged over layers in the "all" row
STAT_KEYS = ("layer", "tokens", "load_entropy", "max_load_ratio", "router_entropy", "router_entropy_norm")
ANGLE_KEYS = ("layer", "num_experts", "base_experts", *ANGLE_MEANS)


def write_tables(results: list[dict], out: Path) -> None:
    stats, angles = [], []
    for r in results:
        head = {"run": r["run"], "config": r.get("config"), "model": r["model"], "task": r["task"]}
        for layer in r.get("layers", []):
            load = " ".join(map(str, layer["load"]))
            stats.append({**head, **{k: layer[k] for k in STAT_KEYS}, "load": load})
        layer_angles = r.get("angles", [])
        for a in layer_angles:
            degrees = " ".join(f"{x:.1f}" for x in a["angles_deg"])
            angles.append({**head, **{k: a[k] for k in ANGLE_KEYS}, "angles_deg": degrees})
        if layer_angles:
            mean = {k: sum(a[k] for a in layer_angles) / len(layer_angles) for k in ANGLE_MEANS}
            angles.append({**head, "layer": "all (mean)", **mean})
    _write(
        stats,
        [*RUN_COLUMNS, *STAT_KEYS, "load"],
        out / "routing_stats",
        "PEFT-expert routing per layer",
        "load_entropy: entropy of the load over the N PEFT experts / log N (1 = balanced); max_load_ratio: "
        "the busiest expert's share x N (1 = balanced); router_entropy: mean per-token entropy of R's router "
        "(nats; _norm: / log N). Prompt tokens of the test sets, padding excluded.",
    )
    _write(
        angles,
        [*RUN_COLUMNS, *ANGLE_KEYS, "angles_deg"],
        out / "principal_angles",
        "R's learned router vs the frozen router",
        "Principal angles (degrees) between the row spaces of R's router W_r (N, D) and the frozen router "
        "W_g (E, D), per layer: 0 = W_r routes along directions W_g already uses, 90 = orthogonal. "
        "random_mean_deg: the mean angle of random Gaussian routers of the same shape against W_g.",
    )


def main(argv: list[str] | None = None) -> int:
    run_dirs, opts = parse_args(sys.argv[1:] if argv is None else argv)
    runs = find_runs(run_dirs, opts["runs"])
    corrupt = find_corrupt(run_dirs, opts["runs"])
    for line in corrupt:
        print(f"corrupt, skipped: {line}", file=sys.stderr)
    if not runs:
        print(
            f"error: no run directories (config.yaml + adapter/) at or below {', '.join(map(str, run_dirs))}",
            file=sys.stderr,
        )
        return 2
    # Before transformers loads: no import-time warnings from packages none of the runs used.
    hide_unused(RunDir(run_dir).load_spec() for run_dir in runs)
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    results, failures = [], 0
    for run_dir in runs:
        try:
            info = analyze_run(run_dir, opts)
        except Exception as e:  # noqa: BLE001 - one bad run must not stop the others
            failures += 1
            print(f"{run_dir}: error: {one_line(e)}", file=sys.stderr)
            continue
        results.append(info)
        if "skipped" in info:
            print(f"{run_dir}: skipped ({info['skipped']})")
            continue
        summary = [f"{len(info['layers'])} routed layers"]
        if info["angles"]:
            mean = sum(a["mean_deg"] for a in info["angles"]) / len(info["angles"])
            summary.append(f"W_r vs W_g mean angle {mean:.1f} deg")
        print(f"{run_dir}: {info['config']}, {', '.join(summary)} -> {info['out']}")
    write_tables(results, out)
    print(f"tables: {out / 'routing_stats.md'}, {out / 'principal_angles.md'}")
    return 1 if failures or (opts["strict"] and corrupt) else 0


if __name__ == "__main__":
    sys.exit(main())
