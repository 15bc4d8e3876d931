"""The W&B workspace and a sweep's report, as code (perft_exp/analysis/dashboards.py): write, check, save.

    # JSON specs, offline:
    python scripts/wandb_dashboard.py --sweep toy --dry-run --out outputs/dashboards/toy
    # do the sweep's offline runs feed every panel?
    python scripts/wandb_dashboard.py --sweep toy --check
    # save both to W&B:
    python scripts/wandb_dashboard.py --sweep toy --entity ENTITY --project perft-exp

The sweep's runs reach W&B first (they log offline into their run directories):
    wandb sync --entity ENTITY --project perft-exp outputs/runs/<task>/<model>/<run>/wandb/offline-run-*
or stream while they train with `logger.mode=online logger.entity=ENTITY` after the sweep's name.

`key=value` arguments after the options are the sweep's extra overrides (as for scripts/sweep.py), so the
check finds the same run directories. Saving needs --entity, --project and an API key (WANDB_API_KEY
or `wandb login`); the dry run and the check need neither an account nor a network.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from perft_exp.analysis import dashboards
from perft_exp.analysis.offline_runs import offline_run_dirs, read_offline_run
from perft_exp.cli import one_line
from perft_exp.config import REPO_ROOT, compose
from perft_exp.data.formats import canonical_test_set
from perft_exp.sweeps.grid import SWEEPS_DIR, Sweep, SweepError


def _sync_command(run_dirs: list[Path], entity: str, project: str) -> str:
    """One `wandb sync` over the sweep's run directories (a glob on their common name prefix)."""
    parents = sorted({d.parent for d in run_dirs})
    prefix = os.path.commonprefix([d.name for d in run_dirs])
    globs = " ".join(f"{p}/{prefix}*/wandb/offline-run-*" for p in parents)
    return f"wandb sync --entity {entity} --project {project} {globs}"


def sweep_info(
    name: str, overrides: list[str], entity: str, project: str
) -> tuple[dashboards.SweepInfo, list[Path]]:
    """What the report needs from a sweep's composed jobs, and the jobs' run directories."""
    sweep = Sweep.load(name)
    try:
        cfgs = [compose(job) for job in sweep.jobs(overrides)]
    except Exception as e:  # noqa: BLE001 - a bad override: one line, as scripts/sweep.py reports it
        raise SweepError(f"{sweep.name}: {one_line(e)}") from e
    run_dirs = [Path(cfg.output_dir) for cfg in cfgs]
    test_sets = list(dict.fromkeys(canonical_test_set(s) for cfg in cfgs for s in cfg.task.test_sets))
    extra = "".join(f" {o}" for o in overrides)
    commands = [
        f"python scripts/sweep.py run {sweep.name}{extra}",
        _sync_command(run_dirs, entity, project),
        f"python scripts/wandb_dashboard.py --sweep {sweep.name} "
        f"--entity {entity} --project {project}{extra}",
    ]
    file = (SWEEPS_DIR / f"{sweep.name}.yaml").relative_to(REPO_ROOT)
    perft = [dict(cfg.perft) for cfg in cfgs]
    return dashboards.SweepInfo(
        sweep.name, str(file), sweep.description, test_sets, perft, commands
    ), run_dirs


def check(spec_keys: set, run_dirs: list[Path]) -> int:
    """Read the sweep's offline runs; report the panel keys none of them has."""
    found = [d for d in run_dirs if offline_run_dirs(d)]
    if not found:
        print("error: none of the sweep's runs has an offline W&B run yet", file=sys.stderr)
        return 1
    runs = [read_offline_run(d) for d in found]
    missing = dashboards.missing_keys(spec_keys, runs)
    for where, key in missing:
        print(f"missing: {where} {key}")
    print(
        f"{len(runs)} of {len(run_dirs)} runs read; {len(spec_keys) - len(missing)} of {len(spec_keys)} "
        "panel keys have data"
    )
    return 1 if missing else 0


def _api_key() -> str | None:
    from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

    return os.environ.get("WANDB_API_KEY") or read_netrc_auth(
        host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", required=True, help="a name under sweeps/ (the report's runs)")
    parser.add_argument("--entity", help="W&B entity (user or team) to save to")
    parser.add_argument(
        "--project", default=compose().logger.project, help="W&B project (default: logger.project)"
    )
    parser.add_argument("--dry-run", action="store_true", help="write the JSON specs only (with --out)")
    parser.add_argument("--out", type=Path, help="directory for workspace.json and report.json")
    parser.add_argument(
        "--check", action="store_true", help="check the panel keys against the sweep's offline runs"
    )
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if args.dry_run and args.out is None:
        parser.error("--dry-run needs --out DIR")
    online = not (args.dry_run or args.check)
    key = _api_key() if online else None
    if online and not (args.entity and key):
        what = [
            w
            for w, ok in (("--entity", args.entity), ("an API key (WANDB_API_KEY or `wandb login`)", key))
            if not ok
        ]
        print(
            f"error: saving to W&B needs {' and '.join(what)}; --dry-run --out DIR writes the specs offline",
            file=sys.stderr,
        )
        return 2
    entity = args.entity or "ENTITY"  # dry runs and checks: a placeholder the specs show
    try:
        info, run_dirs = sweep_info(args.sweep, overrides, entity, args.project)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    workspace = dashboards.workspace(entity, args.project, info.test_sets)
    report = dashboards.sweep_report(entity, args.project, info, resolve=online)
    if args.out is not None:
        for kind, path in dashboards.write_specs(args.out, workspace, report).items():
            print(f"{kind}: {path}")
    if args.check:
        keys = dashboards.referenced_keys(workspace) | dashboards.referenced_keys(report)
        return check(keys, run_dirs)
    if online:
        workspace.save()
        report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
