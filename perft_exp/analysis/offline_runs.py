"""Read an offline W&B run back from its `.wandb` transaction log, with wandb's own reader.

    run = read_offline_run("outputs/runs/<task>/<model>/<name>")   # or a wandb/offline-run-* directory
    run.config["variant"], run.summary["test/average/accuracy"], "train/loss" in run.history_keys

wandb 0.31 has no Python reader for the log (`wandb.Api` needs the server); its CLI does, through
wandb-core: `wandb leet inspect --summary --json` prints the run's config and latest values, and
`wandb leet inspect --json` one JSON object per record, of which the `history` records hold the
logged rows. This module runs those two commands and keeps what the dashboards' checks need.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class OfflineRun:
    """What an offline W&B run holds (read_offline_run): name, config, summary, history keys and row count."""

    path: Path  # the newest offline-run-* directory
    name: str
    config: dict
    summary: dict
    history_keys: set[str] = field(default_factory=set)
    history_rows: int = 0

    def has(self, where: str, key: str) -> bool:
        """Is `key` in the run's `where` ("config", "history" or "summary")?"""
        if where == "history":
            return key in self.history_keys
        return key in (self.config if where == "config" else self.summary)


def offline_run_dirs(run_dir: str | Path) -> list[Path]:
    """The offline W&B runs of a run directory (`<run>/wandb/offline-run-*`), or the directory itself."""
    run_dir = Path(run_dir)
    if run_dir.name.startswith("offline-run-"):
        return [run_dir]
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def _wandb_cli() -> str:
    found = Path(sys.executable).with_name("wandb")  # the wandb of this interpreter's environment
    cli = str(found) if found.is_file() else shutil.which("wandb")
    if cli is None:
        raise FileNotFoundError("the `wandb` command is not installed beside this Python")
    return cli


def _inspect(path: Path, *args: str) -> str:
    done = subprocess.run(
        [_wandb_cli(), "leet", "inspect", *args, str(path)], capture_output=True, text=True, timeout=300
    )
    if done.returncode:
        raise RuntimeError(f"wandb leet inspect {path}: {done.stderr.strip()[-500:]}")
    return done.stdout


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """A run directory's W&B run: config and summary of its newest launch, the keys every launch logged.

    A resumed run keeps its W&B id, but each launch writes its own offline-run-<date>_<time>-<id>
    directory (they sort by time), so the history is the union over them."""
    found = offline_run_dirs(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir}: no offline W&B run (wandb/offline-run-*)")
    info = json.loads(_inspect(found[-1], "--summary", "--json"))
    keys, rows = set(), 0
    for path in found:
        for line in _inspect(path, "--json").splitlines():
            record = json.loads(line)
            if record.get("type") == "history":
                keys |= set(record["history"]["item"])
                rows += 1
    return OfflineRun(
        found[-1], info.get("name", ""), info.get("config") or {}, info.get("summary") or {}, keys, rows
    )
