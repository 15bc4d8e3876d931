"""The launchers of a sweep's unfinished jobs (see perft_exp/sweeps/__init__.py for when to use which).

  run_multirun  `python train.py -m <block>` per block: Hydra's basic launcher, or Slurm (`slurm_overrides`)
  run_on_gpus   a pool of workers, one per GPU group (or CPU slot), each running `python train.py <job>`
                (torchrun over the group's GPUs when it has several); SIGTERM on Ctrl-C, so jobs checkpoint

A job that dies without recording its own failure (killed, or failed before the app started) gets one from
its log's first error line, so `status` shows why. A job another launcher holds or has finished meanwhile is
skipped (`Job.claimable`; train.py exits with EXIT_HELD when it loses a tie),
so several launchers share a grid.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

from perft_exp.cli import EXIT_HELD, SLURM_EXTRA_HINT, submitit_installed
from perft_exp.config import REPO_ROOT
from perft_exp.sweeps.grid import Sweep, SweepError
from perft_exp.sweeps.jobs import Job

TRAIN_PY = REPO_ROOT / "train.py"
LAUNCHERS = ("local", "slurm", "gpus")


def slurm_overrides(args: argparse.Namespace) -> list[str]:
    """The hydra/launcher overrides of `run --launcher slurm` and its options."""
    if args.gpus_per_job > 1:
        # One Slurm task per job: the app maps SLURM_PROCID/SLURM_NTASKS to ranks, but the array tasks have no
        # shared MASTER_ADDR. Multi-GPU jobs: `--launcher gpus` inside an allocation.
        raise SweepError(
            "--launcher slurm runs one process per job; for multi-GPU jobs run "
            "`sweep.py run ... --launcher gpus --gpus-per-job N` inside an sbatch/salloc allocation"
        )
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
            if job.claimable() and job.state() == "failed":
                job.run.clear_failure()
        cmd = [sys.executable, str(TRAIN_PY), "-m", *sweep.block_overrides(block, extra), *launcher_overrides]
        print("+", *(f"{k}={v}" for k, v in sweep.env.items()), " ".join(cmd[1:]), flush=True)
        rc = subprocess.call(cmd, env={**os.environ, **sweep.env})
        if rc == 143 or rc < 0:  # the user (or the scheduler) stopped the sweep; jobs resume on relaunch
            raise KeyboardInterrupt
        if rc:  # config errors exit before anything runs; job failures are in their run directories
            print(f"block exited with code {rc}; going on with the next block", file=sys.stderr)


def gpu_groups(gpus: str, per_job: int) -> list[list[str]]:
    """`0,1,2,3` in groups of `per_job`: [["0", "1"], ["2", "3"]]."""
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or len(ids) % per_job:
        raise SweepError(f"--gpus {gpus!r}: need a multiple of --gpus-per-job={per_job} GPU ids")
    return [ids[i : i + per_job] for i in range(0, len(ids), per_job)]


def first_error(log_text: str) -> str | None:
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
    if job.run.state() in ("finished", "running", "corrupt"):
        return
    message = first_error(log_path.read_text(errors="replace")) or f"exit code {rc}"
    job.run.record_failure(message, f"exit code {rc}", log=str(log_path))


def run_on_gpus(
    jobs: list[Job], groups: list[list[str]], env: dict[str, str] | None = None, cpu: bool = False
) -> None:
    """One worker thread per GPU group; each takes the next unfinished job and runs it pinned to its GPUs.

    `cpu`: the groups are CPU worker slots (`run --jobs N`): no GPU is pinned or used."""
    queue = [job for job in jobs if job.claimable()]
    lock, procs, stop = threading.Lock(), {}, threading.Event()

    def worker(group: list[str]) -> None:
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                job = queue.pop(0)
            where = f"cpu {group[0]}" if cpu else f"gpu {','.join(group)}"
            if not job.claimable():  # another launcher holds, finished or failed it since we looked
                print(f"[{where}] skip   {job.run_dir} ({job.state()} elsewhere)", flush=True)
                continue
            job.run_dir.mkdir(parents=True, exist_ok=True)
            job.run.clear_failure()  # a retry: the old failure is stale
            if len(group) == 1 or cpu:
                cmd = [sys.executable, str(TRAIN_PY), *job.overrides]
            else:
                cmd = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={len(group)}",
                    str(TRAIN_PY),
                    *job.overrides,
                ]
            job_env = {**os.environ, **(env or {}), "CUDA_VISIBLE_DEVICES": "" if cpu else ",".join(group)}
            log_path = job.run.launcher_log
            print(f"[{where}] start  {job.run_dir}", flush=True)
            with open(log_path, "a") as log:
                proc = subprocess.Popen(cmd, env=job_env, stdout=log, stderr=subprocess.STDOUT)
                with lock:
                    procs[proc.pid] = proc
                rc = proc.wait()
                with lock:
                    procs.pop(proc.pid)
            if rc == EXIT_HELD:  # another launcher took it first
                print(f"[{where}] skip   {job.run_dir} (running elsewhere)", flush=True)
                continue
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
