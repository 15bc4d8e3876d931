"""A sweep's jobs before anything launches: each composed, validated and checked against its run directory.

A job's state is its run directory's (perft_exp/run_dir.py: corrupt / finished / running / failed / started /
pending), or `conflict` when that directory holds a run of another config. Two jobs of one grid may not share
a run directory (each would skip the other as finished).

Several launchers may run one sweep at once (two nodes, a re-submitted array): a job is launched only if, at
that moment, no live process holds its run directory, it is not finished, and it has not failed since this
launcher looked (`Job.claimable`); the job's own hold (train.py) settles a tie,
the loser exiting with code 75.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from perft_exp.cli import one_line
from perft_exp.config import ConfigError, check_paths, compose, record_checkpoint_architecture, to_spec
from perft_exp.run_dir import (
    OUTPUT_ROOT,
    STATES,
    RunDir,
    RunDirConflict,
    RunDirCorrupt,
    read_sweep_overrides,
    write_sweep_overrides,
)
from perft_exp.sweeps.grid import Sweep, SweepError


@dataclass
class Job:
    """One job of a sweep: its overrides, its run directory, and why it cannot run yet."""

    overrides: list[str]
    run_dir: Path
    notes: list[str] = field(default_factory=list)  # why it cannot run yet (missing data)
    conflict: str = ""  # its run directory holds a run of another config (RunDir.check)
    first_state: str = ""  # its state when this launcher checked it

    @property
    def run(self) -> RunDir:
        """The job's run directory."""
        return RunDir(self.run_dir)

    def state(self) -> str:
        """`conflict`, or its run directory's state."""
        return "conflict" if self.conflict else self.run.state()

    def claimable(self) -> bool:
        """Whether to launch it now: not finished, corrupt or running, and not failed since this launcher
        looked (another launcher ran it; a failure found at the start is retried)."""
        state = self.state()
        return state not in ("finished", "corrupt", "running", "conflict") and (
            state != "failed" or self.first_state == "failed"
        )


def check_job(overrides: list[str]) -> Job:
    """Compose and validate one job, and check its run directory belongs to its config, as train.py does.

    A missing data directory is a note (fetch the data later), not an error; `run` refuses to launch then."""
    cfg = compose(overrides)
    record_checkpoint_architecture(cfg)  # as train.py records it
    spec, notes = to_spec(cfg), []
    try:
        check_paths(spec)  # what validate checks after the values
    except ConfigError as e:
        if not str(e).startswith("task.data_dir="):  # the data directory is checked last
            raise
        notes.append(f"task.data_dir={spec.task.data_dir!r} does not exist (scripts/fetch_data.py)")
    job = Job(overrides, Path(spec.output_dir), notes)
    try:
        job.run.check(cfg, record=False)  # the composed config: the run directory's identity
    except RunDirConflict as e:
        job.conflict = str(e)
    except RunDirCorrupt:  # its state says so; `status` names the file
        pass
    job.first_state = job.state()
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


def summary(jobs: list[Job]) -> str:
    """`3 finished, 1 failed, 2 pending`."""
    counts = Counter(job.state() for job in jobs)
    return ", ".join(f"{counts[s]} {s}" for s in ("conflict", *STATES) if counts[s])


# What `run` was last given beyond the sweep file (relative to the launch directory, like the runs):
# `show`/`status` without overrides look at those jobs, not at the plain grid's.


def remember_overrides(sweep: Sweep, overrides: list[str]) -> None:
    """Record what `run` was given beyond the sweep file (launched_overrides reads it)."""
    write_sweep_overrides(OUTPUT_ROOT, sweep.name, overrides)


def launched_overrides(sweep: Sweep, overrides: list[str]) -> list[str]:
    """The overrides given, or else the ones the last `run` of this sweep had (said on stderr)."""
    if overrides:
        return overrides
    last = read_sweep_overrides(OUTPUT_ROOT, sweep.name)
    if last:
        print(
            f"({sweep.name} was last run with: {' '.join(last)}; give overrides to look at other jobs)",
            file=sys.stderr,
        )
    return last
