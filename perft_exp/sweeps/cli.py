"""The paper's grids (`sweeps/*.yaml`) as Hydra multiruns of train.py: list them, show their jobs,
launch them.

The commands of `python scripts/sweep.py` (list, show, status, run); see perft_exp/sweeps/__init__.py.
"""

from __future__ import annotations

import argparse
import sys

from perft_exp.sweeps import launch
from perft_exp.sweeps.grid import Sweep, SweepError, list_sweeps
from perft_exp.sweeps.jobs import check_sweep, launched_overrides, remember_overrides, summary


def cmd_list(_: argparse.Namespace) -> int:
    """`list`: every sweep with its jobs, blocks and fixed overrides."""
    for name in list_sweeps():
        sweep = Sweep.load(name)
        print(
            f"{name:<22}{sweep.size():>5} jobs  {len(sweep.blocks)} blocks  "
            f"{' '.join(f'{k}={v}' for k, v in sweep.fixed.items() if k != 'name')}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """`show`: each job's state, run directory and own overrides, every job composed and validated."""
    sweep = Sweep.load(args.sweep)
    jobs = check_sweep(sweep, launched_overrides(sweep, args.overrides))
    width = max(len(str(j.run_dir)) for j in jobs)
    base = sweep.base_overrides()
    for i, job in enumerate(jobs, 1):
        own = [o for o in job.overrides if o not in base]
        print(f"{i:>4}  {job.state():<9} {str(job.run_dir):<{width}}  {' '.join(own)}")
    print(f"{sweep.name}: {len(jobs)} jobs, all compose and validate; every job also has: {' '.join(base)}")
    for note in sorted({n for job in jobs for n in job.notes}):
        print(f"note: {note}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """`status`: each job's state, with why it failed, who runs it or what is corrupt."""
    sweep = Sweep.load(args.sweep)
    jobs = check_sweep(sweep, launched_overrides(sweep, args.overrides))
    for job in jobs:
        state = job.state()
        line = f"{state:<9} {job.run_dir}"
        if state == "failed":
            line += f"  {job.run.read_failure()}"
        elif state == "conflict":
            line += f"  {job.conflict}"
        elif state == "running":
            holder = job.run.holder()
            line += f"  ({holder.host}, pid {holder.pid}, since {holder.started})" if holder else ""
        elif state == "corrupt":
            line += f"  {job.run.corrupt()}"
        print(line)
    print(f"{sweep.name}: {summary(jobs)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: launch the unfinished jobs; 0 when every job finished (or runs under another launcher)."""
    sweep = Sweep.load(args.sweep)
    jobs = check_sweep(sweep, args.overrides)
    todo = [job for job in jobs if job.state() != "finished"]
    blocked = sorted({n for job in todo for n in job.notes})
    if blocked:
        raise SweepError(f"{sweep.name}: {len(todo)} jobs cannot run: {'; '.join(blocked)}")
    conflicts = [job.conflict for job in jobs if job.conflict]
    if conflicts:
        raise SweepError(f"{sweep.name}: {len(conflicts)} jobs: {conflicts[0]}")
    remember_overrides(sweep, args.overrides)
    print(f"{sweep.name}: {len(jobs)} jobs ({summary(jobs)}); launcher {args.launcher}", flush=True)
    for job in jobs:
        if job.state() == "corrupt":
            print(f"skipped: {job.run.corrupt()}", file=sys.stderr)
    try:
        if args.launcher == "gpus":
            if not args.gpus:
                raise SweepError("--launcher gpus needs --gpus, e.g. --gpus 0,1,2,3")
            launch.run_on_gpus(jobs, launch.gpu_groups(args.gpus, args.gpus_per_job), sweep.env)
        elif args.launcher == "local" and args.jobs > 1:
            launch.run_on_gpus(jobs, [[str(i)] for i in range(args.jobs)], sweep.env, cpu=True)
        else:
            extra = launch.slurm_overrides(args) if args.launcher == "slurm" else []
            launch.run_multirun(sweep, jobs, args.overrides, extra)
    except KeyboardInterrupt:
        print(
            f"\n{sweep.name}: stopped; relaunch the same command to resume ({summary(jobs)})", file=sys.stderr
        )
        return 130
    print(f"{sweep.name}: {summary(jobs)}")
    for job in jobs:
        if job.state() == "failed":
            print(f"failed: {job.run.failed}")
    running = sum(job.state() == "running" for job in jobs)
    if running:
        print(
            f"{sweep.name}: {running} jobs running under other launchers; the grid is complete when they end"
        )
    return 0 if all(job.state() in ("finished", "running") for job in jobs) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The subcommand, its options and `key=value` overrides (before or after the options)."""
    parser = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="sweep names and job counts").set_defaults(func=cmd_list)
    for name, func, text in (
        ("show", cmd_show, "one line per job (a dry run: composes and validates, loads no model)"),
        ("status", cmd_status, "finished / failed / started / pending per job"),
        ("run", cmd_run, "launch the sweep's unfinished jobs"),
    ):
        p = sub.add_parser(name, help=text)
        p.set_defaults(func=func)
        p.add_argument("sweep", help="a name under sweeps/ or a path to a sweep YAML")
        p.add_argument("overrides", nargs="*", help="key=value overrides appended to every job")
        if name != "run":
            continue
        p.add_argument("--launcher", choices=launch.LAUNCHERS, default="local")
        p.add_argument("--jobs", type=int, default=1, help="local launcher: jobs at once on CPU (default 1)")
        p.add_argument("--gpus", help="gpus launcher: GPU ids to use, e.g. 0,1,2,3")
        p.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per job (gpus: torchrun over them)")
        slurm = p.add_argument_group("slurm (defaults in conf/hydra/launcher/slurm.yaml)")
        slurm.add_argument("--partition")
        slurm.add_argument("--timeout-min", type=int, dest="timeout_min")
        slurm.add_argument("--account")
        slurm.add_argument("--qos")
        slurm.add_argument("--constraint")
        slurm.add_argument("--mem-gb", type=int, dest="mem_gb")
        slurm.add_argument("--cpus-per-task", type=int, dest="cpus_per_task")
        slurm.add_argument(
            "--slurm-local",
            action="store_const",
            const="slurm_local",
            default="slurm",
            dest="slurm_config",
            help="run the Slurm path as local processes (submitit_local), "
            "e.g. to test a grid without a cluster",
        )
    # Overrides may also follow the options (`run toy --launcher gpus --gpus 0,1 trainer.max_steps=50`).
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-") or "=" not in a]
    if unknown or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run a `sweep.py` subcommand; a SweepError is one line on stderr and exit code 2."""
    args = parse_args(argv)
    try:
        return args.func(args)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
