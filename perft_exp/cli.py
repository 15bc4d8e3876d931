"""The `train.py` command line: Hydra app plus the checks and error reporting around it.

Before Hydra runs anything, every job of the command (all of a `-m` grid) is composed and validated,
so a typo or a bad value fails at once, as one line naming the key, with exit code 2. A job that fails
later, of any exception (out-of-memory included), prints its first error line (exit code 1) and leaves it in
the run directory's failure record (perft_exp/run_dir.py), with the traceback, so `scripts/sweep.py status` shows it as failed; in a
multirun the other jobs go on. `debug=true` (or PERFT_DEBUG=1) shows full stack traces instead.

A job holds its run directory from before anything loads to its end (perft_exp/run_lock.py): a second launch
of the same run exits at once with code 75 and one line naming the holder (in a multirun, the job is skipped).
A full disk, a quota or a read-only file system is one line naming the path being written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig

from perft_exp.config import CONF_DIR, TrainConfig, compose, prepare_run, setup, validate
from perft_exp.optional_imports import hide_unused

log = logging.getLogger("perft_exp")
EXIT_CONFIG, EXIT_RUN, EXIT_PREEMPTED = 2, 1, 143
EXIT_HELD = 75  # EX_TEMPFAIL: another process runs this job; sweep launchers skip it
_NOISE = re.compile(r"^\s*(full_key|object_type|reference_type|To append|Set the environment variable|$)")


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher passes --local_rank=N, which Hydra would reject: move it to the env."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        m = re.match(r"--local[_-]rank(?:=(\d+))?$", arg)
        if m:
            value = m.group(1)
            if value is None and i + 1 < len(argv):
                value, skip = argv[i + 1], True
            os.environ.setdefault("LOCAL_RANK", value or "0")
            continue
        out.append(arg)
    return out


def _schema_fields(class_name: str) -> list[str]:
    import dataclasses

    from perft_exp import config

    cls = getattr(config, class_name, None)
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def one_line(exc: BaseException) -> str:
    """The exception chain as one line: the offending key first, then what is allowed."""
    chain, e = [], exc
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    text = "\n".join(chain)
    missing = re.search(r"Could not find '([\w/]+)/([^'/]*)'", text)
    if missing:
        group, option = missing.groups()
        block = text.split(f"Available options in '{group}':", 1)[-1].split("Config search path", 1)[0]
        options = [o.strip() for o in block.split() if o.strip() and not o.strip().endswith("_schema")]
        return f"{group}={option}: no such option; choose one of {', '.join(options)}"
    unknown = re.search(r"Key '(\w+)' not in '(\w+)'", text)
    full_key = re.search(r"full_key:\s*(\S+)", text)
    if unknown:
        key = full_key.group(1) if full_key else unknown.group(1)
        known = _schema_fields(unknown.group(2))
        return f"{key}: no such key" + (f"; known keys here: {', '.join(known)}" if known else "")
    parts = []
    for line in text.splitlines():
        line = line.strip()
        if line and not _NOISE.match(line) and "$VALUE" not in line and line not in parts:
            parts.append(line)
    message = "; ".join(parts)
    key = full_key.group(1) if full_key else None
    return f"{key}: {message}" if key and not message.startswith(key) else message


def _job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The jobs the command line describes: itself, or a multirun's grid (what Hydra's basic sweeper runs)."""
    from perft_exp.sweeps.grid import expand

    if not multirun:
        OverridesParser.create().parse_overrides(overrides)  # a malformed override fails here, named
        return [overrides]
    return expand(overrides)


SLURM_EXTRA_HINT = "the Slurm launcher needs hydra-submitit-launcher: pip install -e '.[slurm]'"


def submitit_installed() -> bool:
    """Whether hydra-submitit-launcher (the `[slurm]` extra) is importable."""
    import importlib.util

    try:
        return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ModuleNotFoundError:  # not even the hydra_plugins namespace exists
        return False


def precheck(argv: list[str]) -> list[TrainConfig]:
    """Compose and validate every job the command line describes (their typed specs are returned); exit 2 with
    one line on the first error."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    launcher = [a.split("=", 1)[1] for a in argv if a.startswith("hydra/launcher=")]
    if launcher and ("slurm" in launcher[-1] or "submitit" in launcher[-1]) and not submitit_installed():
        print(f"error: hydra/launcher={launcher[-1]}: {SLURM_EXTRA_HINT}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    overrides = [a for a in argv if not a.startswith("-") and not a.startswith("hydra.") and "=" in a]
    specs = []
    try:
        for job in _job_overrides(overrides, multirun):
            specs.append(validate(compose(job)))
    except Exception as e:  # noqa: BLE001 - reported as one line below; debug=true shows the trace
        if _debug(argv):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    return specs


def _debug(argv: list[str]) -> bool:
    return os.environ.get("PERFT_DEBUG") == "1" or "debug=true" in argv


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


# Errors whose message is already the one line a user needs; any other exception also gets its type named.
_CLEAR_ERRORS = (ValueError, FileNotFoundError)


def error_line(exc: BaseException) -> str:
    """The first error line of any exception: one_line() for the app's own errors, `Type: first line` else."""
    from perft_exp.adapters.io import AdapterError
    from perft_exp.config import ConfigError
    from perft_exp.files import write_error
    from perft_exp.training.trainer import NonFiniteLossError

    disk = write_error(exc)
    if disk is not None:
        return str(disk)
    if isinstance(exc, (ConfigError, AdapterError, NonFiniteLossError, *_CLEAR_ERRORS)):
        return one_line(exc)
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    from perft_exp.config import ConfigError
    from perft_exp.run_dir import RunDir
    from perft_exp.run_lock import RunDirHeld
    from perft_exp.training.distributed import is_main_process

    run = RunDir(cfg.output_dir)
    try:
        # Rank 0 holds the directory for every rank of the run (train() holding it again is a no-op), before
        # torch and the trainer are even imported.
        hold = run.hold() if is_main_process() else contextlib.nullcontext()
        with hold:
            return _run_and_record(cfg, run)
    except RunDirHeld as e:
        if _is_multirun():  # another launcher runs this job: go on with the next
            log.warning("job %s skipped: %s", cfg.name, e)
            return None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_HELD)
    except OSError as e:  # taking the hold on a full or read-only disk (train's own errors are _Failed)
        if cfg.debug or os.environ.get("PERFT_DEBUG") == "1":
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(EXIT_RUN)
    except _Failed as failed:
        e, message = failed.args
        if _is_multirun():  # the sweep goes on with the next job
            log.error("job %s failed: %s", cfg.name, message)
            return None
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_RUN)


class _Failed(Exception):
    """(the exception, its one line): a job's failure, recorded while the job still holds its directory."""


def _run_and_record(cfg: DictConfig, run) -> float | None:
    from perft_exp.run_dir import RunDirConflict, RunDirCorrupt
    from perft_exp.run_lock import RunDirHeld
    from perft_exp.training.run import train
    from perft_exp.training.trainer import Preempted

    try:
        # The run takes the typed spec (and the composed config, as the run directory's identity and record)
        results = train(prepare_run(cfg))
    except Preempted as e:
        log.warning("%s", e)
        sys.exit(EXIT_PREEMPTED)
    except RunDirHeld:
        raise
    except Exception as e:  # noqa: BLE001 - any failure (out-of-memory included) is one line and a failure record
        if cfg.debug or os.environ.get("PERFT_DEBUG") == "1":
            raise
        message = error_line(e)
        # A directory of another config's run, or one to start over: leave it as it is.
        if not isinstance(e, (RunDirConflict, RunDirCorrupt)):
            not_recorded = run.record_failure(message, type(e).__name__, exc=e)
            message += f"; {not_recorded}" if not_recorded else ""
        raise _Failed(e, message) from None
    return (results.get("eval") or {}).get("average")


def main() -> None:
    sys.argv = [sys.argv[0], *_strip_launcher_args(sys.argv[1:])]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    setup()
    hide_unused(precheck(sys.argv[1:]))  # before transformers is imported: no bitsandbytes/DeepSpeed noise
    _app()
