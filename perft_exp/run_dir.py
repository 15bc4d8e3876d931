"""The run directory (torch-free): its file names, its state, the config it belongs to, its failure record.

    outputs/runs/<task>/<model>/<name>/
      results.json     a finished run           -> state "finished"
      failed.json      a run that raised        -> state "failed" (error: the first error line)
      checkpoints/     an interrupted run       -> state "started"
      run_config.json  the config that owns the directory (checked by train.py and by every sweep)

train.py, scripts/sweep.py and the analysis all read and write these through this module only.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from perft_exp.files import atomic_write_json

RESULTS_NAME = "results.json"
FAILED_NAME = "failed.json"
RUN_CONFIG_NAME = "run_config.json"
CONFIG_YAML = "config.yaml"
STATES = ("finished", "failed", "started", "pending")
# Keys that may change between launches of the same run without changing what it computes.
RELAUNCH_FREE = ("resume", "debug", "output_dir", "name", "logger")
# Below a run directory: checkpoints, and re-evaluations (scripts/evaluate.py) with their own results.json.
_NOT_RUNS = ("checkpoints", "evaluations")


class RunDirConflict(ValueError):
    """The run directory holds a run of another config."""


def state(run_dir: Path) -> str:
    if (run_dir / RESULTS_NAME).is_file():
        return "finished"
    if (run_dir / FAILED_NAME).is_file():
        return "failed"
    if (run_dir / "checkpoints").is_dir():
        return "started"
    return "pending"


# --- failures ---------------------------------------------------------------------------------------


def record_failure(run_dir: Path, error: str, kind: str, exc: BaseException | None = None, **extra) -> None:
    """failed.json: the first error line, its kind, and the traceback when there is one. A first record wins
    (under torchrun every rank fails; the first to fail holds the real error)."""
    path = Path(run_dir) / FAILED_NAME
    if path.is_file():
        return
    record = {"error": error, "type": kind, **extra}
    if exc is not None:
        record["traceback"] = "".join(traceback.format_exception(exc))
    atomic_write_json(path, record)


def clear_failure(run_dir: Path) -> None:
    """A new attempt: the old failure is stale (a new one is recorded if it fails again)."""
    (Path(run_dir) / FAILED_NAME).unlink(missing_ok=True)


def read_failure(run_dir: Path) -> str:
    try:
        return json.loads((Path(run_dir) / FAILED_NAME).read_text()).get("error", "")
    except (OSError, json.JSONDecodeError):
        return ""


# --- the config a directory belongs to --------------------------------------------------------------


def config_identity(conf: dict) -> dict:
    """A resolved config (as a container) less the keys that may change between launches of one run."""
    return {k: v for k, v in conf.items() if k not in RELAUNCH_FREE and k != "hydra"}


def run_identity(cfg: DictConfig) -> dict:
    """What a run directory's results depend on: the resolved config, and the tiny model's build key."""
    ident = config_identity(OmegaConf.to_container(cfg, resolve=True))
    pretrained = str(cfg.model.pretrained)
    if pretrained.startswith(
        "tiny:"
    ):  # a rebuilt tiny model (new spec or synthetic world) is another base model
        from perft_exp.models.tiny import TINY_SPECS

        spec = TINY_SPECS.get(pretrained[len("tiny:") :])
        ident["tiny_build"] = spec.key() if spec else None
    return json.loads(json.dumps(ident))


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _recorded_identity(run_dir: Path) -> dict | None:
    path = run_dir / RUN_CONFIG_NAME
    if path.is_file():
        return json.loads(path.read_text())
    if (run_dir / CONFIG_YAML).is_file():  # a run finished before run_config.json existed
        return config_identity(OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_YAML)))
    return None


def check_run_dir(cfg: DictConfig, run_dir: Path, record: bool = True) -> None:
    """A run directory belongs to one config: another config there is an error, not a silent reuse.

    Default names carry a hash of the config's difference from the defaults (config.run_name), so this fires
    for explicit `name=...` collisions, for edited YAML defaults, and for a rebuilt tiny model. `record`:
    write run_config.json on first use, or on `resume=false` (train.py); sweeps only check.
    """
    run_dir = Path(run_dir)
    want = run_identity(cfg)
    have = _recorded_identity(run_dir)
    if have is None:
        if record:
            atomic_write_json(run_dir / RUN_CONFIG_NAME, want)
        return
    a, b = flatten(have), flatten(want)
    # Keys on one side only are schema changes between versions of this code, not another experiment.
    diff = [k for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    if not diff:
        return
    if not cfg.resume:  # starting over: the directory now belongs to this config
        if record:
            atomic_write_json(run_dir / RUN_CONFIG_NAME, want)
        return
    shown = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in diff[:3]) + (" ..." if len(diff) > 3 else "")
    raise RunDirConflict(
        f"{run_dir} holds a run with another config ({shown}); choose another directory with name=..., "
        "or resume=false to start it over"
    )


# --- finding runs -----------------------------------------------------------------------------------


def find_run_dirs(root: str | Path, pattern: str = "*") -> Iterable[Path]:
    """Directories below `root` whose name matches `pattern`, holding results.json (finished) or failed.json."""
    root = Path(root)
    seen = set()
    for name in (RESULTS_NAME, FAILED_NAME):
        for path in sorted(root.rglob(name)):
            run_dir = path.parent
            inside = run_dir.relative_to(root).parts if run_dir != root else ()
            if (
                run_dir in seen
                or any(part in _NOT_RUNS for part in inside)
                or not fnmatch(run_dir.name, pattern)
            ):
                continue
            seen.add(run_dir)
            yield run_dir
