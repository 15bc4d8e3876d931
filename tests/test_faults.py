"""Faults survived, through train.py and the scripts (subprocesses): two launches of one run, a killed holder,
two launchers sharing a grid, a full disk, corrupt files among good runs (issue 25)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_train
from test_run_lock import CORRUPTIBLE, corrupt_runs
from test_sweeps import shrink, toy_miniature

from perft_exp.cli import EXIT_HELD
from perft_exp.run_lock import HOLD_NAME

pytestmark = pytest.mark.slow


def _base(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "trainer=debug",
        "logger=none",
        "eval.enabled=false",
        f"model.pretrained={model_dir}",
        "task.max_train_examples=32",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def _error_lines(text: str) -> list[str]:
    return re.findall(r"error: [^\r\n]*", text)


def test_a_second_launch_of_a_running_run_is_refused_at_once(micro_model_dir, app_env, tmp_path):
    run_dir = tmp_path / "run"
    args = _base(
        micro_model_dir,
        run_dir,
        "trainer.max_steps=4000",
        "trainer.save_steps=2000",
        "trainer.eval_steps=2000",
    )
    first = _start(args, app_env)
    _wait_for(run_dir / HOLD_NAME, first)
    second = run_train(args, app_env, timeout=300)
    assert first.poll() is None, "the first run ended before the second launch"
    assert second.returncode == EXIT_HELD, second.stderr[-3000:]
    (line,) = _error_lines(second.stderr)
    assert f"{run_dir} is in use by another process ({socket.gethostname()}, pid {first.pid}, since " in line
    assert "Traceback" not in second.stderr and "resuming" not in second.stdout + second.stderr
    lines = []
    for text in first.stdout:  # training under way: SIGTERM is a preemption from here on
        lines.append(text)
        if "/4000 [" in text:
            break
    first.send_signal(signal.SIGTERM)  # preempted: it checkpoints, exits 143 and lets go of the directory
    out = "".join(lines) + first.communicate(timeout=600)[0]
    assert first.returncode == 143, out[-3000:]
    assert not (run_dir / HOLD_NAME).exists() and not (run_dir / "failed.json").exists()


def test_a_killed_holder_is_taken_over_and_the_run_resumes(micro_model_dir, app_env, tmp_path):
    run_dir = tmp_path / "run"
    args = _base(micro_model_dir, run_dir)
    first = _start(args, app_env)
    _wait_for(run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json", first)
    first.kill()  # kill -9: the hold file stays behind
    first.wait()
    assert (run_dir / HOLD_NAME).is_file() and not (run_dir / "results.json").exists()
    again = run_train(args, app_env)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"taking over the hold of a process that has ended ({socket.gethostname()}, pid {first.pid}" in log
    assert "resuming from" in log and not (run_dir / HOLD_NAME).exists()


def test_two_launchers_share_one_grid_every_job_runs_once(micro_model_dir, app_env, tmp_path):
    """Two `sweep.py run` of one shrunk toy grid at once: each job is trained by one of them, both exit 0."""
    grid = toy_miniature(tmp_path / "toy3.yaml", seeds=(0, 1, 2))
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "sweep.py"),
        "run",
        str(grid),
        *shrink(micro_model_dir),
        "eval.enabled=false",
    ]
    launchers = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=app_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    runs = sorted((tmp_path / "outputs" / "runs").rglob("results.json"))
    assert len(runs) == 3, runs
    # Each training logs its data once (`train 32 examples`); skips are held or already finished jobs.
    trained = sum(len(re.findall(r"\btrain 32 examples", o)) for o in outs)
    assert trained == 3, "\n\n".join(outs)
    skipped = sum(
        len(re.findall(r"skipped: .* is in use by another process|the run is finished", o)) for o in outs
    )
    assert skipped == 3, "\n\n".join(outs)
    assert not list((tmp_path / "outputs").rglob(HOLD_NAME)) and not list(
        (tmp_path / "outputs").rglob("failed.json")
    )


def test_no_space_left_is_one_line_and_the_next_launch_resumes(micro_model_dir, app_env, tmp_path):
    """ENOSPC simulated in the checkpoint writer (torch.save) after the first checkpoint, and in
    failed.json."""
    run_dir = tmp_path / "run"
    hook = tmp_path / "hook" / "sitecustomize.py"  # runs at interpreter start-up in the train.py subprocess
    hook.parent.mkdir()
    hook.write_text(
        "import errno, os, torch\n"
        "from perft_exp import files\n"
        "_save = torch.save\n"
        "def save(obj, f, *a, **k):\n"
        "    if 'checkpoint-8' in str(f):\n"
        "        open(f, 'wb').write(b'half')\n"
        "        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2') "
        "from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return _save(obj, f, *a, **k)\n"
        "torch.save = save\n"
        "_fsync = files.os.fsync\n"
        "def fsync(fd):\n"
        "    if os.readlink(f'/proc/self/fd/{fd}').endswith(f'failed.json.tmp{os.getpid()}'):\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return _fsync(fd)\n"
        "files.os.fsync = fsync\n"
    )
    env = {**app_env, "PYTHONPATH": f"{hook.parent}:{app_env.get('PYTHONPATH', '')}"}
    full = run_train(_base(micro_model_dir, run_dir), env)
    assert full.returncode == 1, full.stderr[-3000:]
    (line,) = _error_lines(full.stderr)
    ckpt = run_dir / "checkpoints" / "checkpoint-8"
    assert line == (
        f"error: cannot write {ckpt}: No space left on device [ENOSPC] (free space or raise the quota, "
        f"or move output_root); {run_dir / 'failed.json'} not written either: No space left on device"
    )
    assert "Traceback" not in full.stderr
    left = sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if ".tmp" in p.name or "checkpoint-8" in str(p)
    )
    assert left == [] and (run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    assert not (run_dir / HOLD_NAME).exists()

    again = run_train(_base(micro_model_dir, run_dir), app_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-4'}" in again.stdout + again.stderr


def test_a_real_full_tmpfs(micro_model_dir, app_env, tmp_path):
    """The same on a 600 KiB tmpfs (root only: skipped where mount is not permitted)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        run_dir = mnt / "run"
        full = run_train(_base(micro_model_dir, run_dir), app_env)
        assert full.returncode == 1, full.stderr[-3000:]
        (line,) = _error_lines(full.stderr)
        assert re.match(rf"error: cannot write {run_dir}/\S+: No space left on device \[ENOSPC\]", line), line
        assert "Traceback" not in full.stderr
        assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
        complete = [p for p in (run_dir / "checkpoints").glob("checkpoint-*")]
        assert all((p / "trainer_state.json").is_file() for p in complete), complete
        subprocess.run(["mount", "-o", "remount,size=50m", str(mnt)], check=True)
        again = run_train(_base(micro_model_dir, run_dir), app_env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert ("resuming from" in again.stdout + again.stderr) == bool(complete)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_corrupt_files_among_good_runs(micro_model_dir, app_env, tmp_path):
    """One good run and a copy of it per corrupt file: the reports list and skip the bad ones (exit 0, or 1
    with --strict); a relaunch names the file and resume=false starts it over."""
    good = tmp_path / "runs" / "good"
    r = run_train(_base(micro_model_dir, good, "eval.enabled=true", "task.max_test_examples=2"), app_env)
    assert r.returncode == 0, r.stderr[-3000:]
    bad = corrupt_runs(tmp_path / "runs", good)

    collect = [
        sys.executable,
        str(REPO / "scripts" / "collect_results.py"),
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "report"),
    ]
    report = subprocess.run(collect, cwd=REPO, env=app_env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    listed = [ln for ln in report.stderr.splitlines() if ln.startswith("corrupt, skipped: ")]
    assert len(listed) == len(CORRUPTIBLE) and "Traceback" not in report.stderr
    assert all(str(bad[rel] / rel) in "\n".join(listed) for rel in CORRUPTIBLE)
    assert f"{len(CORRUPTIBLE)} corrupt runs" in report.stdout
    md = (tmp_path / "report" / "results.md").read_text()
    assert "## Corrupt run directories" in md and "good" in md
    strict = subprocess.run(
        [*collect, "--strict"], cwd=REPO, env=app_env, capture_output=True, text=True, timeout=300
    )
    assert strict.returncode == 1

    routing = [
        sys.executable,
        str(REPO / "scripts" / "analyze_routing.py"),
        f"run_dir={tmp_path / 'runs'}",
        f"out={tmp_path / 'routing'}",
        "forward=false",
    ]
    r = subprocess.run(routing, cwd=REPO, env=app_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        f"{good}: " in r.stdout and len([ln for ln in r.stderr.splitlines() if ln.startswith("corrupt")]) == 5
    )
    assert (tmp_path / "routing" / "routing_stats.md").is_file()
    strict = subprocess.run(
        [*routing, "--strict"], cwd=REPO, env=app_env, capture_output=True, text=True, timeout=600
    )
    assert strict.returncode == 1, strict.stderr[-3000:]

    results = bad["results.json"]
    relaunch = run_train(
        _base(micro_model_dir, results, "eval.enabled=true", "task.max_test_examples=2"), app_env
    )
    assert relaunch.returncode == 1
    (line,) = _error_lines(relaunch.stderr)
    assert line.startswith(f"error: {results / 'results.json'} is unreadable (") and "resume=false" in line
    over = run_train(
        _base(micro_model_dir, results, "eval.enabled=true", "task.max_test_examples=2", "resume=false"),
        app_env,
    )
    assert over.returncode == 0, over.stderr[-3000:]
    assert json.loads((results / "results.json").read_text())["variant"]


def test_a_torn_newest_checkpoint_falls_back_and_none_left_is_one_line(micro_model_dir, app_env, tmp_path):
    """The issue's case: checkpoint-8's adapter tensors truncated, checkpoint-4 fine. The relaunch says so in
    one warning line and resumes checkpoint-4; with both torn it stops in one line until resume=false."""
    run_dir = tmp_path / "run"
    first = run_train(_base(micro_model_dir, run_dir), app_env)
    assert first.returncode == 0, first.stderr[-3000:]
    for unfinished in ("results.json", "adapter"):  # as if the run had died after its last checkpoint
        path = run_dir / unfinished
        path.unlink() if path.is_file() else shutil.rmtree(path)
    ckpts = run_dir / "checkpoints"

    def tear(step: int, name: str) -> None:
        f = ckpts / f"checkpoint-{step}" / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])

    tear(8, "adapter_model.safetensors")
    again = run_train(_base(micro_model_dir, run_dir), app_env)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    (line,) = [ln for ln in out.splitlines() if "do not load" in ln]
    assert "checkpoint-8 (adapter_model.safetensors is truncated" in line, line
    assert line.endswith("resuming from checkpoint-4")
    assert f"resuming from {ckpts / 'checkpoint-4'}" in out
    assert json.loads((run_dir / "results.json").read_text())["train"]["steps"] == 8

    (run_dir / "results.json").unlink()
    tear(8, "optimizer.pt")
    tear(4, "trainer_state.json")
    stuck = run_train(_base(micro_model_dir, run_dir), app_env)
    assert stuck.returncode == 1, stuck.stderr[-3000:]
    (line,) = _error_lines(stuck.stderr)
    assert line.startswith(f"error: no checkpoint in {ckpts} loads: checkpoint-8 (optimizer.pt is ")
    assert "checkpoint-4 (trainer_state.json is truncated or corrupted" in line
    assert line.endswith("relaunch with resume=false to start the run over")
    assert "Traceback" not in stuck.stderr
    over = run_train(_base(micro_model_dir, run_dir, "resume=false"), app_env)
    assert over.returncode == 0, over.stderr[-3000:]
    assert "resuming from" not in over.stdout + over.stderr
