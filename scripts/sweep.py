"""The paper's grids (`sweeps/*.yaml`) as Hydra multiruns of train.py: list them, show their jobs, launch them.

    python scripts/sweep.py list
    python scripts/sweep.py show olmoe_commonsense       # one line per job: composes + validates, loads no model
    python scripts/sweep.py status olmoe_commonsense     # finished / failed / started / pending per job
    python scripts/sweep.py run toy                      # local: Hydra's basic launcher, one job after another
    python scripts/sweep.py run toy --jobs 2             # local, two jobs at once (CPU; one thread each)
    python scripts/sweep.py run olmoe_math --launcher slurm --partition gpu --timeout-min 1440
    python scripts/sweep.py run olmoe_commonsense --launcher gpus --gpus 0,1,2,3,4,5,6,7
    python scripts/sweep.py run mixtral_math --launcher gpus --gpus 0,1,2,3,4,5,6,7 --gpus-per-job 4 deepspeed=zero3

A sweep file has `fixed` (overrides shared by every job) and `blocks`: each block maps override keys to a
value or a list of values and stands for the Cartesian product of its lists; the grid is the union of the
blocks. An optional `env` mapping is set in the environment of the launched train.py processes. Non-Cartesian parts of a grid are named presets (`routing=n8k2` is conf/routing/n8k2.yaml, R's
(N, K) pair). `key=value` arguments after the sweep name are appended to every job (last value wins).

Each job runs in outputs/runs/<task>/<model>/<name> (relative to the current directory), a name that
depends only on the config: relaunching skips finished jobs and resumes interrupted ones from their newest
checkpoint; a failing job leaves its failure record there and the others go on (perft_exp/run_dir.py). Every job's
run directory is checked against its config before anything launches, as train.py checks it (state
`conflict`: it holds another config's run), and `run` refuses a grid whose data directory is missing.
`show` and `status` without overrides look at the jobs of the sweep's last `run` (its overrides are kept
in outputs/sweeps/<sweep>.json).

Launchers:
  local  `python train.py -m <block>` per block, Hydra's basic launcher (sequential).
  slurm  the same with hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml, hydra-submitit-launcher): one
         array task per job; this process waits for the array, so start it in tmux on the login node.
         `--slurm-local`: the same plugin with submitit_local (local processes, no sbatch), for tests.
  gpus   one job per GPU (or per --gpus-per-job GPUs, through torchrun) on this node: a small pool of workers,
         each pinning CUDA_VISIBLE_DEVICES and running `python train.py <job>`; logs in <run>/launcher.log.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from perft_exp.cli import SLURM_EXTRA_HINT, one_line, submitit_installed
from perft_exp.config import REPO_ROOT, ConfigError, compose, validate
from perft_exp.files import atomic_write_json
from perft_exp.run_dir import OUTPUT_ROOT, STATES, RunDir, RunDirConflict, sweep_record

SWEEPS_DIR = REPO_ROOT / "sweeps"
TRAIN_PY = REPO_ROOT / "train.py"
LAUNCHERS = ("local", "slurm", "gpus")


class SweepError(ValueError):
    """A malformed sweep file, or a grid whose jobs collide or do not compose."""


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


@dataclass
class Sweep:
    name: str
    fixed: dict[str, Any]
    blocks: list[dict[str, list]]
    description: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, name_or_path: str) -> Sweep:
        path = Path(name_or_path)
        if not path.suffix:
            path = SWEEPS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SweepError(f"no sweep {name_or_path!r}; choose one of {', '.join(list_sweeps())}")
        raw = yaml.safe_load(path.read_text()) or {}
        unknown = set(raw) - {"fixed", "blocks", "description", "env"}
        if unknown:
            raise SweepError(
                f"{path}: unknown keys {sorted(unknown)}; a sweep has fixed, blocks, env, description"
            )
        fixed = dict(raw.get("fixed") or {})
        for key, value in fixed.items():
            if isinstance(value, (list, dict)):
                raise SweepError(f"{path}: fixed.{key} must be a single value (put lists in a block)")
        blocks = []
        for i, block in enumerate(raw.get("blocks") or []):
            if not isinstance(block, dict) or not block:
                raise SweepError(
                    f"{path}: blocks[{i}] must be a non-empty mapping of override keys to values"
                )
            axes = {}
            for key, values in block.items():
                values = values if isinstance(values, list) else [values]
                if not values or any(isinstance(v, (list, dict)) for v in values):
                    raise SweepError(
                        f"{path}: blocks[{i}].{key} must be a value or a non-empty list of values"
                    )
                if key in fixed:
                    raise SweepError(f"{path}: blocks[{i}] sets {key!r}, which `fixed` already sets")
                axes[key] = values
            blocks.append(axes)
        if not blocks:
            raise SweepError(f"{path}: no blocks")
        env = {str(k): str(v) for k, v in (raw.get("env") or {}).items()}
        return cls(path.stem, fixed, blocks, raw.get("description", ""), env)

    def base_overrides(self) -> list[str]:
        return [f"{k}={_fmt(v)}" for k, v in self.fixed.items()] + [f"logger.group={self.name}"]

    def block_overrides(self, block: dict[str, list], extra: list[str] = ()) -> list[str]:
        """One block as a Hydra multirun command line: `variant=R routing=n2k1,n2k2 perft.bottleneck=4,8`."""
        swept = [f"{k}={','.join(_fmt(v) for v in values)}" for k, values in block.items()]
        return [*self.base_overrides(), *swept, *extra]

    def block_jobs(self, block: dict[str, list], extra: list[str] = ()) -> list[list[str]]:
        """The jobs Hydra's basic sweeper makes of one block (so `show` lists exactly what `run` runs)."""
        parsed = OverridesParser.create().parse_overrides(self.block_overrides(block, extra))
        return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]

    def jobs(self, extra: list[str] = ()) -> list[list[str]]:
        return [job for block in self.blocks for job in self.block_jobs(block, extra)]

    def size(self) -> int:
        return sum(len(list(itertools.product(*block.values()))) for block in self.blocks)


def list_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


@dataclass
class Job:
    overrides: list[str]
    run_dir: Path
    notes: list[str] = field(default_factory=list)  # why it cannot run yet (missing data)
    conflict: str = ""  # its run directory holds a run of another config (run_dir.check_run_dir)

    def state(self) -> str:
        return "conflict" if self.conflict else RunDir(self.run_dir).state()


def check_job(overrides: list[str]) -> Job:
    """Compose and validate one job, and check its run directory belongs to its config, as train.py does.

    A missing data directory is a note (fetch the data later), not an error; `run` refuses to launch then."""
    cfg = compose(overrides)
    notes = []
    try:
        validate(cfg)
    except ConfigError as e:
        if not str(e).startswith("task.data_dir="):  # validate checks the data directory last
            raise
        notes.append(f"task.data_dir={cfg.task.data_dir!r} does not exist (scripts/fetch_data.py)")
    job = Job(overrides, Path(cfg.output_dir), notes)
    try:
        RunDir(job.run_dir).check(cfg, record=False)
    except RunDirConflict as e:
        job.conflict = str(e)
    return job


def check_sweep(sweep: Sweep, extra: list[str] = ()) -> list[Job]:
    """Every job composed and validated, and no two sharing a run directory (they would skip each other)."""
    jobs = []
    for overrides in sweep.jobs(extra):
        try:
            jobs.append(check_job(overrides))
        except Exception as e:  # noqa: BLE001 - re-raised with the job named
            raise SweepError(f"{sweep.name}: job `{' '.join(overrides)}`: {one_line(e)}") from e
    dirs = Counter(job.run_dir for job in jobs)
    clashes = [str(d) for d, n in dirs.items() if n > 1]
    if clashes:
        raise SweepError(f"{sweep.name}: several jobs share a run directory: {', '.join(clashes[:3])}")
    return jobs


# --- commands ---------------------------------------------------------------------------------------


def cmd_list(_: argparse.Namespace) -> int:
    for name in list_sweeps():
        sweep = Sweep.load(name)
        print(f"{name:<22}{sweep.size():>5} jobs  {len(sweep.blocks)} blocks  "
              f"{' '.join(f'{k}={v}' for k, v in sweep.fixed.items() if k != 'name')}")  # fmt: skip
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    sweep = Sweep.load(args.sweep)
    jobs = check_sweep(sweep, _resolve_overrides(sweep, args.overrides))
    width = max(len(str(j.run_dir)) for j in jobs)
    base = sweep.base_overrides()
    for i, job in enumerate(jobs, 1):
        own = [o for o in job.overrides if o not in base]
        print(f"{i:>4}  {job.state():<9} {str(job.run_dir):<{width}}  {' '.join(own)}")
    print(f"{sweep.name}: {len(jobs)} jobs, all compose and validate; every job also has: {' '.join(base)}")
    for note in sorted({n for job in jobs for n in job.notes}):
        print(f"note: {note}")
    return 0


def _summary(jobs: list[Job]) -> str:
    counts = Counter(job.state() for job in jobs)
    return ", ".join(f"{counts[s]} {s}" for s in ("conflict", *STATES) if counts[s])


def _launched_path(sweep: Sweep) -> Path:
    """What `run` was last given beyond the sweep file (relative to the launch directory, like the runs):
    `show`/`status` without overrides look at those jobs, not at the plain grid's."""
    return sweep_record(OUTPUT_ROOT, sweep.name)


def _remember_overrides(sweep: Sweep, overrides: list[str]) -> None:
    atomic_write_json(_launched_path(sweep), {"overrides": list(overrides)})


def _resolve_overrides(sweep: Sweep, overrides: list[str]) -> list[str]:
    """The overrides given, or else the ones the last `run` of this sweep had (said on stderr)."""
    path = _launched_path(sweep)
    if overrides or not path.is_file():
        return overrides
    last = json.loads(path.read_text()).get("overrides") or []
    if last:
        print(f"({sweep.name} was last run with: {' '.join(last)}; give overrides to look at other jobs)",
              file=sys.stderr)  # fmt: skip
    return last


def cmd_status(args: argparse.Namespace) -> int:
    sweep = Sweep.load(args.sweep)
    jobs = check_sweep(sweep, _resolve_overrides(sweep, args.overrides))
    for job in jobs:
        state = job.state()
        line = f"{state:<9} {job.run_dir}"
        if state == "failed":
            line += f"  {RunDir(job.run_dir).read_failure()}"
        elif state == "conflict":
            line += f"  {job.conflict}"
        print(line)
    print(f"{sweep.name}: {_summary(jobs)}")
    return 0


def _slurm_overrides(args: argparse.Namespace) -> list[str]:
    if args.gpus_per_job > 1:
        # One Slurm task per job: the app maps SLURM_PROCID/SLURM_NTASKS to ranks, but the array tasks have no
        # shared MASTER_ADDR. Multi-GPU jobs: `--launcher gpus` inside an allocation.
        raise SweepError("--launcher slurm runs one process per job; for multi-GPU jobs run "
                         "`sweep.py run ... --launcher gpus --gpus-per-job N` inside an sbatch/salloc allocation")  # fmt: skip
    if not submitit_installed():
        raise SweepError(f"--launcher slurm: {SLURM_EXTRA_HINT}")
    out = [f"hydra/launcher={args.slurm_config}", f"hydra.launcher.gpus_per_node={args.gpus_per_job}"]
    for key in ("partition", "timeout_min", "account", "qos", "constraint", "mem_gb", "cpus_per_task"):
        value = getattr(args, key)
        if value is not None:
            out.append(f"hydra.launcher.{key}={value}")
    return out


def run_multirun(sweep: Sweep, jobs: list[Job], extra: list[str], launcher_overrides: list[str]) -> None:
    """`python train.py -m <block>` per block that has unfinished jobs (Hydra's basic or Slurm launcher)."""
    start = 0
    for block in sweep.blocks:
        n = len(sweep.block_jobs(block, extra))
        block_jobs, start = jobs[start : start + n], start + n
        if all(job.state() == "finished" for job in block_jobs):
            continue
        for job in block_jobs:  # a retry: the app records a new failure if the job fails again
            RunDir(job.run_dir).clear_failure()
        cmd = [sys.executable, str(TRAIN_PY), "-m", *sweep.block_overrides(block, extra), *launcher_overrides]
        print("+", *(f"{k}={v}" for k, v in sweep.env.items()), " ".join(cmd[1:]), flush=True)
        rc = subprocess.call(cmd, env={**os.environ, **sweep.env})
        if rc == 143 or rc < 0:  # the user (or the scheduler) stopped the sweep; jobs resume on relaunch
            raise KeyboardInterrupt
        if rc:  # config errors exit before anything runs; job failures are in their run directories
            print(f"block exited with code {rc}; going on with the next block", file=sys.stderr)


def _gpu_groups(gpus: str, per_job: int) -> list[list[str]]:
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or len(ids) % per_job:
        raise SweepError(f"--gpus {gpus!r}: need a multiple of --gpus-per-job={per_job} GPU ids")
    return [ids[i : i + per_job] for i in range(0, len(ids), per_job)]


def _first_error(log_text: str) -> str | None:
    """The first error line of a job's log: the app's `error: ...` line (the first rank's, under torchrun, not
    the launcher's ChildFailedError after it), else the first line naming an error."""
    lines = [ln.strip() for ln in log_text.replace("\r", "\n").splitlines() if ln.strip()]
    for pick in (lambda ln: ln.startswith("error:"), lambda ln: "Error" in ln):
        found = next((ln for ln in lines if pick(ln)), None)
        if found:
            return found.removeprefix("error: ")
    return None


def _record_failure(job: Job, rc: int, log_path: Path) -> None:
    """A job that died without recording its failure itself (killed, or it failed before the app started)."""
    run = RunDir(job.run_dir)
    if run.state() == "finished":
        return
    message = _first_error(log_path.read_text(errors="replace")) or f"exit code {rc}"
    run.record_failure(message, f"exit code {rc}", log=str(log_path))


def run_on_gpus(
    jobs: list[Job], groups: list[list[str]], env: dict[str, str] | None = None, cpu: bool = False
) -> None:
    """One worker thread per GPU group; each takes the next unfinished job and runs it pinned to its GPUs.

    `cpu`: the groups are CPU worker slots (`run --jobs N`): no GPU is pinned or used."""
    queue = [job for job in jobs if job.state() != "finished"]
    lock, procs, stop = threading.Lock(), {}, threading.Event()

    def worker(group: list[str]) -> None:
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                job = queue.pop(0)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            RunDir(job.run_dir).clear_failure()  # a retry: the old failure is stale
            if len(group) == 1 or cpu:
                cmd = [sys.executable, str(TRAIN_PY), *job.overrides]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={len(group)}", str(TRAIN_PY), *job.overrides]  # fmt: skip
            job_env = {**os.environ, **(env or {}), "CUDA_VISIBLE_DEVICES": "" if cpu else ",".join(group)}
            log_path = RunDir(job.run_dir).launcher_log
            where = f"cpu {group[0]}" if cpu else f"gpu {','.join(group)}"
            print(f"[{where}] start  {job.run_dir}", flush=True)
            with open(log_path, "a") as log:
                proc = subprocess.Popen(cmd, env=job_env, stdout=log, stderr=subprocess.STDOUT)
                with lock:
                    procs[proc.pid] = proc
                rc = proc.wait()
                with lock:
                    procs.pop(proc.pid)
            if rc and not stop.is_set():
                _record_failure(job, rc, log_path)
            print(f"[{where}] {job.state():<8} {job.run_dir}", flush=True)

    threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in groups]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=1.0)
    except KeyboardInterrupt:
        stop.set()
        with lock:
            running = list(procs.values())
        for proc in running:  # SIGTERM: the trainer saves a checkpoint, so the job resumes on relaunch
            proc.terminate()
        for proc in running:
            proc.wait()
        raise


def cmd_run(args: argparse.Namespace) -> int:
    sweep = Sweep.load(args.sweep)
    jobs = check_sweep(sweep, args.overrides)
    todo = [job for job in jobs if job.state() != "finished"]
    blocked = sorted({n for job in todo for n in job.notes})
    if blocked:
        raise SweepError(f"{sweep.name}: {len(todo)} jobs cannot run: {'; '.join(blocked)}")
    conflicts = [job.conflict for job in jobs if job.conflict]
    if conflicts:
        raise SweepError(f"{sweep.name}: {len(conflicts)} jobs: {conflicts[0]}")
    _remember_overrides(sweep, args.overrides)
    print(f"{sweep.name}: {len(jobs)} jobs ({_summary(jobs)}); launcher {args.launcher}", flush=True)
    try:
        if args.launcher == "gpus":
            if not args.gpus:
                raise SweepError("--launcher gpus needs --gpus, e.g. --gpus 0,1,2,3")
            run_on_gpus(jobs, _gpu_groups(args.gpus, args.gpus_per_job), sweep.env)
        elif args.launcher == "local" and args.jobs > 1:
            run_on_gpus(jobs, [[str(i)] for i in range(args.jobs)], sweep.env, cpu=True)
        else:
            extra = _slurm_overrides(args) if args.launcher == "slurm" else []
            run_multirun(sweep, jobs, args.overrides, extra)
    except KeyboardInterrupt:
        print(
            f"\n{sweep.name}: stopped; relaunch the same command to resume ({_summary(jobs)})",
            file=sys.stderr,
        )
        return 130
    print(f"{sweep.name}: {_summary(jobs)}")
    for job in jobs:
        if job.state() == "failed":
            print(f"failed: {RunDir(job.run_dir).failed}")
    return 0 if all(job.state() == "finished" for job in jobs) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        p.add_argument("--launcher", choices=LAUNCHERS, default="local")
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
        slurm.add_argument("--slurm-local", action="store_const", const="slurm_local", default="slurm",
                           dest="slurm_config", help="run the Slurm path as local processes (submitit_local), "
                           "e.g. to test a grid without a cluster")  # fmt: skip
    # Overrides may also follow the options (`run toy --launcher gpus --gpus 0,1 trainer.max_steps=50`).
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-") or "=" not in a]
    if unknown or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
