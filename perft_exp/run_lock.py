"""The hold on a run directory (torch-free): one process at a time trains or evaluates in it.

    <run>/.hold.json   {"host", "pid", "since", "token", "pid_start"}; its mtime is the holder's heartbeat

A process takes the hold before it loads anything and keeps it to its end, on any node of a shared file
system. fcntl locks are not enough there (NFS, Lustre and GPFS honour them unevenly, and a lock of a node
that disappears may never be released), so the hold is a file:

  take     link(2) of a complete temporary file to `.hold.json`: atomic on local and network file systems,
           and it fails if another process got there first. Then the file is read back to confirm the token.
  keep     a daemon thread touches the file every HEARTBEAT_S seconds.
  release  the file is removed when the process ends (a `with` block, and atexit for a hard sys.exit).
  stale    a holder whose heartbeat is older than STALE_S (default 5 minutes; PERFT_HOLD_STALE_S), or on this
           host a holder whose pid is gone (kill -9), has ended: the next launch takes the hold over with a
           warning. A takeover renames the stale file away first, so two takers cannot both win.

Ranks other than 0 of a multi-rank run (torchrun, DeepSpeed) do not take it: their rank 0 holds it for them.
A process may hold a directory once; holding it again (train() inside the app's hold) is a no-op.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HOLD_NAME = ".hold.json"
HEARTBEAT_S = 30.0
STALE_S = 300.0


class RunDirHeld(RuntimeError):
    """Another live process holds the run directory."""


def stale_after() -> float:
    """Seconds without a heartbeat after which a hold has ended (a node that disappeared)."""
    return float(os.environ.get("PERFT_HOLD_STALE_S", STALE_S))


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux),
    so a reused pid is not taken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return start is None or _pid_start(pid) in (None, start)


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory, as its hold file says, and how fresh its heartbeat is."""

    host: str
    pid: int
    since: str  # ISO 8601, UTC
    token: str
    pid_start: str | None
    heartbeat_age: float  # seconds since the holder last touched the file

    def alive(self) -> bool:
        """False when this host's holder process is gone; otherwise whether its heartbeat is fresh."""
        if self.host == socket.gethostname() and not _pid_alive(self.pid, self.pid_start):
            return False  # this host's process is gone (kill -9): stale at once
        return self.heartbeat_age <= stale_after()

    @property
    def started(self) -> str:
        """`2026-12-02 04:20:13 UTC`."""
        return f"{self.since.replace('T', ' ')[:19]} UTC"

    def describe(self) -> str:
        """`node7, pid 4242, since 2026-12-02 04:20:13 UTC`."""
        if self.pid < 0:
            return f"an unreadable hold file, touched {self.heartbeat_age:.0f} s ago"
        return f"{self.host}, pid {self.pid}, since {self.started}"


def read_holder(path: Path) -> Holder | None:
    """The hold file's holder; None when there is no hold. An unreadable file (damaged, or being written where
    link(2) is missing) counts as a holder of unknown identity until its mtime is stale."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        age = 0.0
    try:
        record = json.loads(path.read_text())
        return Holder(
            str(record["host"]),
            int(record["pid"]),
            str(record["since"]),
            str(record["token"]),
            record.get("pid_start"),
            age,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Holder("?", -1, "?", "", None, age)


_HELD: dict[Path, RunLock] = {}  # this process's holds, by directory
_HELD_LOCK = threading.Lock()


class RunLock:
    """The hold on one run directory, as a context manager: `with RunLock(run_dir): train(...)`.

    Raises RunDirHeld on entry when a live process holds the directory. Re-entering a directory this process
    already holds is a no-op (the outer hold keeps it)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / HOLD_NAME
        self.token = uuid.uuid4().hex
        self._owner = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        key = self.run_dir.resolve()
        with _HELD_LOCK:
            if key in _HELD:
                return self
            self.acquire()
            _HELD[key] = self
            self._owner = True
        return self

    def __exit__(self, *exc) -> None:
        if self._owner:
            self.release()

    def _record(self) -> bytes:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "")
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": now,
                "token": self.token,
                "pid_start": _pid_start(os.getpid()),
            }
        ).encode()

    def _create(self) -> bool:
        """Link a complete hold file into place; False when one exists already."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f"{HOLD_NAME}.{self.token}"
        try:
            tmp.write_bytes(self._record())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: exclusive create (not atomic on old NFS)
                with open(self.path, "xb") as f:
                    f.write(tmp.read_bytes())
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> None:
        """Take the hold, taking it over from a holder that has ended; RunDirHeld while a live one has it."""
        for _ in range(5):  # a few rounds: another taker may move the file between our steps
            if self._create():
                holder = read_holder(self.path)
                if holder is not None and holder.token == self.token:
                    self._start_heartbeat()
                    return
                continue
            holder = read_holder(self.path)
            if holder is None:
                continue
            if holder.alive():
                raise RunDirHeld(
                    f"{self.run_dir} is in use by another process ({holder.describe()}); wait for it to end, "
                    f"or if it is gone, its hold expires {stale_after():.0f} s after its last heartbeat"
                )
            self._take_over(holder)
        raise RunDirHeld(f"{self.run_dir}: could not take the hold ({self.path} keeps changing)")

    def _take_over(self, stale: Holder) -> None:
        """Move the stale hold file away; put it back if it changed hands meanwhile (another taker won)."""
        moved = self.run_dir / f"{HOLD_NAME}.stale-{self.token}"
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        taken = read_holder(moved)
        if taken is not None and taken.token != stale.token:
            try:
                os.link(moved, self.path)
            except FileExistsError:
                pass
        else:
            log.warning(
                "%s: taking over the hold of a process that has ended (%s; last heartbeat %.0f s ago)",
                self.run_dir,
                stale.describe(),
                stale.heartbeat_age,
            )
        moved.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                holder = read_holder(self.path)
                if holder is None or holder.token != self.token:
                    log.warning(
                        "%s: this process lost its hold on the run directory (%s)",
                        self.run_dir,
                        holder.describe() if holder else "hold file removed",
                    )
                    return
                try:
                    os.utime(self.path)
                except OSError as e:  # a full or read-only disk: the run reports its own write errors
                    log.warning("%s: heartbeat failed: %s", self.path, e)

        self._thread = threading.Thread(target=beat, name=f"hold {self.run_dir.name}", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def release(self) -> None:
        """Stop the heartbeat and remove the hold file if it is still this process's."""
        self._stop.set()
        atexit.unregister(self.release)
        with _HELD_LOCK:
            if _HELD.get(self.run_dir.resolve()) is self:
                del _HELD[self.run_dir.resolve()]
        self._owner = False
        holder = read_holder(self.path)
        if holder is not None and holder.token == self.token:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as e:  # a file system gone read-only: the hold goes stale with its heartbeat
                log.warning("%s: could not remove the hold: %s", self.path, e)
