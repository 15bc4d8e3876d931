"""The hold on a run directory (perft_exp/run_lock.py), write failures (perft_exp/files.py) and corrupt run
directories (perft_exp/run_dir.py), without training: other processes hold, die and race for real."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from perft_exp import files, run_lock
from perft_exp.run_dir import RunDir
from perft_exp.run_lock import HOLD_NAME, RunDirHeld, RunLock

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys, time
    from perft_exp.run_lock import RunLock, RunDirHeld
    try:
        with RunLock(sys.argv[1]):
            print("held", flush=True)
            time.sleep(float(sys.argv[2]))
    except RunDirHeld as e:
        print("refused", e, flush=True)
""")


def _holder(run_dir: Path, seconds: float = 60) -> subprocess.Popen:
    """Another process holding `run_dir` for `seconds` (it says `held` once it does)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunDirHeld) as refused, RunLock(tmp_path / "run"):
            pass
        message = str(refused.value)
        assert f"{socket.gethostname()}, pid {proc.pid}, since " in message and " UTC" in message
        holder = RunDir(tmp_path / "run").holder()
        assert holder is not None and holder.pid == proc.pid
        assert RunDir(tmp_path / "run").state() == "running"
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    proc = _holder(tmp_path / "run")
    proc.kill()  # SIGKILL: no cleanup, the hold file stays
    proc.wait()
    assert (tmp_path / "run" / HOLD_NAME).is_file()
    assert RunDir(tmp_path / "run").holder() is None  # same host, pid gone: stale at once
    assert RunDir(tmp_path / "run").state() == "pending"
    with caplog.at_level(logging.WARNING), RunLock(tmp_path / "run") as hold:
        assert json.loads((tmp_path / "run" / HOLD_NAME).read_text())["token"] == hold.token
    assert (
        f"taking over the hold of a process that has ended ({socket.gethostname()}, pid {proc.pid}"
        in caplog.text
    )
    assert not (tmp_path / "run" / HOLD_NAME).exists()  # released at the end of the block
    assert [p.name for p in (tmp_path / "run").iterdir()] == []


def test_another_nodes_hold_expires_with_its_heartbeat(tmp_path, caplog, monkeypatch):
    """A node that disappeared: its pid cannot be checked from here, so its heartbeat decides."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    hold = run_dir / HOLD_NAME
    hold.write_text(json.dumps({"host": "node-gone", "pid": 1, "since": "2026-12-01T10:00:00", "token": "x"}))
    with (
        pytest.raises(RunDirHeld, match=r"node-gone, pid 1, since 2026-12-01 10:00:00 UTC"),
        RunLock(run_dir),
    ):
        pass  # fresh heartbeat: alive
    old = time.time() - run_lock.STALE_S - 60
    os.utime(hold, (old, old))
    with caplog.at_level(logging.WARNING), RunLock(run_dir):
        assert RunDir(run_dir).holder().host == socket.gethostname()
    assert "node-gone, pid 1" in caplog.text and "last heartbeat" in caplog.text
    monkeypatch.setenv("PERFT_HOLD_STALE_S", "1")  # the threshold is configurable
    hold.write_text(json.dumps({"host": "node-gone", "pid": 1, "since": "2026-12-01T10:00:00", "token": "x"}))
    os.utime(hold, (time.time() - 5, time.time() - 5))
    with RunLock(run_dir):
        pass


def test_the_heartbeat_keeps_the_hold_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    with RunLock(tmp_path / "run"):
        hold = tmp_path / "run" / HOLD_NAME
        os.utime(hold, (0, 0))
        time.sleep(0.5)
        assert time.time() - hold.stat().st_mtime < 5


def test_holding_twice_in_one_process_is_one_hold(tmp_path):
    with RunLock(tmp_path / "run") as outer:
        with RunLock(tmp_path / "run"):  # train() inside the app's hold
            pass
        assert json.loads((tmp_path / "run" / HOLD_NAME).read_text())["token"] == outer.token
    assert not (tmp_path / "run" / HOLD_NAME).exists()


def test_racing_processes_one_wins(tmp_path):
    """Eight processes started at once for one directory: exactly one holds it, the others are refused."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "run"), "3"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outcomes = [p.communicate(timeout=120)[0].split()[0] for p in procs]
    assert sorted(outcomes) == ["held"] + ["refused"] * 7, outcomes


def test_status_shows_the_holder_of_a_running_job(tmp_path, monkeypatch, capsys):
    from perft_exp.sweeps import cli as sweep_cli
    from perft_exp.sweeps import jobs as sweep_jobs

    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("fixed: {variant: S, trainer: debug}\nblocks:\n  - {seed: [0, 1]}\n")
    from perft_exp.sweeps.grid import Sweep

    jobs = sweep_jobs.check_sweep(Sweep.load(str(grid)))
    proc = _holder(tmp_path / jobs[0].run_dir)
    try:
        assert sweep_cli.main(["status", str(grid)]) == 0
        out = capsys.readouterr().out
        assert f"running   {jobs[0].run_dir}  ({socket.gethostname()}, pid {proc.pid}, since " in out
        assert out.splitlines()[-1] == "grid: 1 running, 1 pending"
        assert not jobs[0].claimable() and jobs[1].claimable()
    finally:
        proc.kill()
        proc.wait()


# --- write failures ----------------------------------------------------------------------------------


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_atomic_write_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", _enospc)  # the data did not fit
    target = tmp_path / "run" / "results.json"
    with pytest.raises(files.WriteError) as failed:
        files.atomic_write_json(target, {"a": 1})
    assert str(failed.value).startswith(f"cannot write {target}: No space left on device [ENOSPC]")
    assert failed.value.errno == errno.ENOSPC
    assert list((tmp_path / "run").iterdir()) == []


def test_the_failure_record_never_raises_and_says_why_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", _enospc)
    run = RunDir(tmp_path / "run")
    note = run.record_failure("cannot write x: No space left on device", "WriteError")
    assert note == f"{run.failed} not written either: No space left on device"
    assert list((tmp_path / "run").iterdir()) == []


def test_write_errors_are_found_in_the_chain_and_named():
    """torch.save's writer raises a RuntimeError without an errno;
    safetensors reports an io::Error as text."""
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 120640 vs 120528")  # noqa: B904
    except RuntimeError as e:
        chained = e
    found = files.write_error(chained, "/runs/a/checkpoints")
    assert (found.errno, found.filename) == (errno.ENOSPC, "/runs/a/checkpoints")
    rust = Exception("Error while serializing: IoError(Os { code: 122, kind: QuotaExceeded, message: ... })")
    assert files.write_error(rust, "/runs/a/adapter").errno == errno.EDQUOT
    # a read, maybe
    assert files.write_error(PermissionError(errno.EACCES, "Permission denied", "/m")) is None
    assert files.write_error(PermissionError(errno.EACCES, "Permission denied"), "/w").filename == "/w"
    assert files.write_error(ValueError("no")) is None

    from perft_exp.cli import error_line

    assert error_line(chained).startswith("RuntimeError: ")  # no path known: left as it is
    named = files.WriteError(errno.EROFS, os.strerror(errno.EROFS), "/runs/a/eval")
    assert error_line(named) == "cannot write /runs/a/eval: Read-only file system [EROFS]"


def test_writing_names_the_directory_when_the_writer_does_not(tmp_path):
    with pytest.raises(files.WriteError, match=rf"cannot write {tmp_path}: Disk quota exceeded"):
        with files.writing(tmp_path):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    with pytest.raises(KeyError), files.writing(tmp_path):
        raise KeyError("not a write failure")


# --- corrupt run directories ---------------------------------------------------------------------------

CORRUPTIBLE = ["results.json", "run_config.json", "failed.json", "adapter/adapter_config.json", "config.yaml"]


def corrupt_runs(root: Path, good: Path | None = None) -> dict[str, Path]:
    """One run directory per corruptible file, each that file truncated mid-write
    (copies of `good` if given)."""
    import shutil

    out = {}
    for rel in CORRUPTIBLE:
        run = root / f"bad-{rel.replace('/', '_').replace('.', '_')}"
        if good is not None:
            shutil.copytree(good, run)
        else:
            (run / "adapter").mkdir(parents=True)
            for name in ("results.json", "run_config.json", "adapter/adapter_config.json"):
                (run / name).write_text(
                    json.dumps({"variant": "S", "perft": {"variant": "S"}, "x": [1, 2, 3]})
                )
            (run / "config.yaml").write_text("model:\n  name: m\n")
        path = run / rel
        text = path.read_text() if path.exists() else '{"error": "boom", "type": "OSError"}'
        path.write_text(text[: len(text) // 2] + ("\n  - [" if rel.endswith(".yaml") else ""))
        out[rel] = run
    return out


@pytest.mark.parametrize("rel", CORRUPTIBLE)
def test_an_unreadable_record_makes_the_run_corrupt(rel, tmp_path):
    run = RunDir(corrupt_runs(tmp_path)[rel])
    bad = run.corrupt()
    assert bad is not None and bad.path == run.path / rel and run.state() == "corrupt"
    assert str(bad).startswith(f"{run.path / rel} is unreadable (")
    assert ("resume=false" in bad.fix) != (rel == "failed.json")


def test_collect_lists_and_skips_corrupt_runs(tmp_path):
    from perft_exp.analysis.results.runs import collect
    from perft_exp.analysis.results.tables import write_markdown

    bad = corrupt_runs(tmp_path)
    good = tmp_path / "good"
    good.mkdir()
    (good / "results.json").write_text(
        json.dumps(
            {
                "variant": "S",
                "perft": {"variant": "S", "bottleneck": 4},
                "model": "m",
                "task": "t",
                "eval": {},
            }
        )
    )
    collection = collect(tmp_path)
    assert [r.name for r in collection.runs] == ["good"]
    # failed.json alone makes a run directory for find(); the others are found by their results.json
    assert sorted(collection.corrupt) == sorted(str(RunDir(bad[rel]).corrupt()) for rel in CORRUPTIBLE)
    text = write_markdown(collection, tmp_path / "results.md").read_text()
    assert "## Corrupt run directories" in text and "resume=false" in text


def test_status_shows_corrupt_jobs_and_run_skips_them(tmp_path, monkeypatch, capsys):
    from perft_exp.sweeps import cli as sweep_cli
    from perft_exp.sweeps import jobs as sweep_jobs
    from perft_exp.sweeps import launch as sweep_launch
    from perft_exp.sweeps.grid import Sweep

    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("fixed: {variant: S, trainer: debug}\nblocks:\n  - {seed: [0, 1]}\n")
    jobs = sweep_jobs.check_sweep(Sweep.load(str(grid)))
    jobs[0].run_dir.mkdir(parents=True)
    (jobs[0].run_dir / "run_config.json").write_text('{"model": {"na')
    assert sweep_cli.main(["status", str(grid)]) == 0
    out = capsys.readouterr().out
    assert f"corrupt   {jobs[0].run_dir}  {jobs[0].run_dir / 'run_config.json'} is unreadable (" in out
    assert out.splitlines()[-1] == "grid: 1 corrupt, 1 pending"
    launched = []
    monkeypatch.setattr(
        sweep_launch,
        "run_on_gpus",
        lambda js, *a, **k: launched.extend(j.run_dir for j in js if j.claimable()),
    )
    assert sweep_cli.main(["run", str(grid), "--jobs", "2"]) == 1
    assert launched == [jobs[1].run_dir]
    assert "skipped: " in capsys.readouterr().err


def test_the_pool_skips_held_jobs_and_a_lost_tie_is_no_failure(tmp_path, monkeypatch, capsys):
    """`--jobs N` / `--launcher gpus`: a job another process holds is not launched; a job whose train.py lost
    the tie for its hold (exit code 75) is skipped, not recorded as failed."""
    from perft_exp.cli import EXIT_HELD
    from perft_exp.sweeps import jobs as sweep_jobs
    from perft_exp.sweeps import launch as sweep_launch

    fake = tmp_path / "fake_train.py"  # stands in for train.py: finishes, or loses the tie like the app
    fake.write_text(
        "import json, os, sys\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:])\n"
        "if args['tie'] == '1': "
        f"print('error: in use by another process', file=sys.stderr); sys.exit({EXIT_HELD})\n"
        "open(os.path.join(args['out'], 'results.json'), 'w').write('{}')\n"
    )
    monkeypatch.setattr(sweep_launch, "TRAIN_PY", fake)
    jobs = [
        sweep_jobs.Job([f"out={tmp_path / n}", f"tie={int(n == 'tie')}"], tmp_path / n)
        for n in ("held", "tie", "free")
    ]
    for job in jobs:
        job.first_state = job.state()
    proc = _holder(tmp_path / "held")
    try:
        sweep_launch.run_on_gpus(jobs, [["0"]], cpu=True)
        assert [job.state() for job in jobs] == ["running", "pending", "finished"]
        assert (
            not (tmp_path / "held" / "launcher.log").exists()
            and not (tmp_path / "tie" / "failed.json").exists()
        )
        assert f"skip   {tmp_path / 'tie'} (running elsewhere)" in capsys.readouterr().out
    finally:
        proc.kill()
        proc.wait()


def test_an_unreadable_hold_file_holds_until_it_is_stale(tmp_path):
    hold = tmp_path / "run" / HOLD_NAME
    hold.parent.mkdir()
    hold.write_text('{"host": "no')
    with (
        pytest.raises(RunDirHeld, match="an unreadable hold file, touched 0 s ago"),
        RunLock(tmp_path / "run"),
    ):
        pass
    old = time.time() - run_lock.STALE_S - 1
    os.utime(hold, (old, old))
    with RunLock(tmp_path / "run"):
        pass
