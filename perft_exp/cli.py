"""The `train.py` command line: Hydra app plus the checks and error reporting around it.

Before Hydra runs anything, every job of the command (all of a `-m` grid) is composed and validated,
so a typo or a bad value fails at once, as one line naming the key, with exit code 2. A job that fails
later, of any exception (out-of-memory included), prints its first error line (exit code 1) and leaves it in
the run directory's failure record (perft_exp/run_dir.py), with the traceback, so `scripts/sweep.py status`
shows it as failed; in a multirun the other jobs go on. `debug=true` (or PERFT_DEBUG=1) shows full stack
traces instead.

A job holds its run directory from before anything loads to its end (perft_exp/run_lock.py): a second launch
of the same run exits at once with code 75 and one line naming the holder (in a multirun, the job is skipped).
A full disk, a quota or a read-only file system is one line naming the path being written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from perft_exp.config import CONF_DIR, TrainConfig, compose, prepare_run, setup, validate
from perft_exp.optional_imports import hide_unused

log = logging.getLogger("perft_exp")
EXIT_CONFIG, EXIT_RUN, EXIT_PREEMPTED = 2, 1, 143
EXIT_HELD = 75  # EX_TEMPFAIL: another process runs this job; sweep launchers skip it
# Hydra's hint after a failed override ("To append to your config use +key=value"): the line names the key.
_HYDRA_HINTS = ("To append to your",)


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher passes --local_rank=N, which Hydra would reject: drop it.

    Both launchers also set LOCAL_RANK in the environment (what the app reads); an argument-only launcher
    (torch.distributed.launch without --use-env) is covered by moving the value there."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--local_rank", "--local-rank", nargs="?", const="0")
    known, rest = parser.parse_known_args(argv)
    if known.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", known.local_rank)
    return rest


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what caused it, outermost first. An OmegaConf error with its node described ends the
    chain: its own cause (chained only under a debugger or OC_CAUSE=1) is the same error before OmegaConf
    filled in the message."""
    e: BaseException | None = exc
    while e is not None:
        yield e
        if isinstance(e, OmegaConfBaseException) and e.full_key is not None:
            return
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def _message(e: BaseException) -> str:
    """An exception's text; an OmegaConf error's without the node description it appends (`full_key: ...`,
    `object_type=...`: the error's attributes)."""
    text = str(e)
    if isinstance(e, OmegaConfBaseException) and e.full_key is not None:
        text = text.split(f"\n    full_key: {e.full_key}", 1)[0]
    return text


def _known_keys(e: OmegaConfBaseException) -> list[str]:
    """The keys of the config node a key was missing from: its schema's fields, else the node's keys."""
    if dataclasses.is_dataclass(e.object_type):
        return [f.name for f in dataclasses.fields(e.object_type)]
    return [str(k) for k in e.parent_node.keys()] if isinstance(e.parent_node, DictConfig) else []


def one_line(exc: BaseException) -> str:
    """The exception chain as one line: the offending key first, then what is allowed.

    The key, the config group and its options come from the errors' attributes: Hydra's MissingConfigException
    (`missing_cfg_file`, `options`) and OmegaConf's errors (`full_key`, `object_type`), which Hydra's
    composition errors carry as their cause."""
    chain = list(_chain(exc))
    missing = next((e for e in chain if isinstance(e, MissingConfigException)), None)
    if missing is not None and "/" in (missing.missing_cfg_file or ""):
        group, _, option = missing.missing_cfg_file.rpartition("/")
        options = [o for o in missing.options or () if not o.endswith("_schema")]
        return f"{group}={option}: no such option; choose one of {', '.join(options)}"
    node = next((e for e in chain if isinstance(e, OmegaConfBaseException) and e.full_key is not None), None)
    if isinstance(node, (ConfigKeyError, ConfigAttributeError)):
        known = _known_keys(node)
        return f"{node.full_key}: no such key" + (f"; known keys here: {', '.join(known)}" if known else "")
    parts = []
    for e in chain:
        for line in _message(e).splitlines():
            line = line.strip()
            # a cause whose text its wrapper already quotes adds nothing
            if line and not line.startswith(_HYDRA_HINTS) and not any(line in part for part in parts):
                parts.append(line)
    message = "; ".join(parts)
    key = node.full_key if node is not None else None
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
