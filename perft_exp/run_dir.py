"""The run directory (torch-free): the one owner of its layout, its state, its config and its failure record.

    <output_root>/runs/<task>/<model>/<name>/      (output_root: `outputs`, relative to the launch directory)
      results.json        a finished run                 -> state "finished"
      .hold.json          the process working in it      -> state "running" (perft_exp/run_lock.py)
      failed.json         a run that raised              -> state "failed" (error: the first error line)
      checkpoints/        an interrupted run             -> state "started"; else "pending"
        checkpoint-<step>/  complete once trainer_state.json is written; RunDir.latest_checkpoint resumes the
                            newest one whose files all read back
      run_config.json     the config that owns the directory (checked by train.py and by every sweep)
      config.yaml         the resolved config, written beside results.json (what `load_spec` reads back)
      .hydra/overrides.yaml  the command line's overrides (replayed by scripts/evaluate.py)
      adapter/            the best adapter (adapter_model.safetensors + adapter_config.json)
      eval/<set>.jsonl    the per-question records of the run's evaluation
      evaluations/<task>-<mode>[-base]/   re-evaluations (scripts/evaluate.py), each with its own results.json
      launcher.log        the output of a job started by `scripts/sweep.py run --launcher gpus`
    <output_root>/base_eval/<task>/<model>/<mode>-<key>.json   the untuned base model's evaluation, shared
    <output_root>/sweeps/<sweep>.json                          a sweep's last `run` overrides

Training, sweeps, re-evaluation, the results tables and the routing analysis all find, read and write these
files through `RunDir` only, so no other module spells a file name of this layout.

A run directory with an unreadable results.json, failed.json, run_config.json, config.yaml or adapter config
is in state "corrupt" (`RunDir.corrupt()` names the file and the fix): reports list and skip it, and train.py
refuses to resume it until it is started over with `resume=false`.
"""

from __future__ import annotations

import json
import logging
import shutil
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from perft_exp.files import atomic_write_bytes, atomic_write_json, unreadable
from perft_exp.run_lock import Holder, RunLock, read_holder

RESULTS_NAME = "results.json"
FAILED_NAME = "failed.json"
RUN_CONFIG_NAME = "run_config.json"
CONFIG_YAML = "config.yaml"
RECORDS_DIR = "eval"  # <run>/eval/<set>.jsonl
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG_NAME = "adapter_config.json"  # adapters/io.py writes it (adapter/, checkpoints)
CHECKPOINTS_DIR = "checkpoints"
EVALUATIONS_DIR = "evaluations"
STATES = ("corrupt", "finished", "running", "failed", "started", "pending")
OUTPUT_ROOT = "outputs"  # the config's default `output_root`
# Keys that may change between launches of the same run without changing what it computes.
RELAUNCH_FREE = ("resume", "debug", "output_dir", "output_root", "name", "logger")
# Below a run directory: checkpoints, and re-evaluations with their own results.json.
_NOT_RUNS = (CHECKPOINTS_DIR, EVALUATIONS_DIR)


log = logging.getLogger(__name__)


class RunDirConflict(ValueError):
    """The run directory holds a run of another config."""


class RunDirCorrupt(ValueError):
    """A file of the run directory cannot be read (see RunDir.corrupt)."""


@dataclass(frozen=True)
class CorruptFile:
    """An unreadable file of a run directory, why, and what to do about it."""

    path: Path
    reason: str

    @property
    def fix(self) -> str:
        if self.path.name == FAILED_NAME:
            return "delete it (it only records a failure), or relaunch: a new attempt replaces it"
        return "relaunch the run with resume=false to start it over (or delete the run directory)"

    def __str__(self) -> str:
        return f"{self.path} is unreadable ({self.reason}); {self.fix}"


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    return data


def base_eval_dir(output_root: str | Path, task: str, model: str) -> Path:
    """Where the untuned base model's evaluations of one task and model are cached (shared by every run)."""
    return Path(output_root) / "base_eval" / task / model


def sweep_record(output_root: str | Path, sweep: str) -> Path:
    """The file that keeps a sweep's last `run` overrides."""
    return Path(output_root) / "sweeps" / f"{sweep}.json"


def write_sweep_overrides(output_root: str | Path, sweep: str, overrides: list[str]) -> None:
    """Keep the overrides of a sweep's `run` (`status` and `show` without overrides read them back)."""
    atomic_write_json(sweep_record(output_root, sweep), {"overrides": list(overrides)})


def read_sweep_overrides(output_root: str | Path, sweep: str) -> list[str]:
    """The overrides of the sweep's last `run` ([] when it was never run, or run without any)."""
    path = sweep_record(output_root, sweep)
    return (json.loads(path.read_text()).get("overrides") or []) if path.is_file() else []


class _Below:
    """A path below a run directory, as a read-only attribute of RunDir:
    `RunDir(p).results == p / RESULTS_NAME`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, run: RunDir | None, owner: type) -> Path:
        return Path(self.name) if run is None else run.path / self.name


@dataclass(frozen=True)
class RunDir:
    """One run directory: its paths, its state, its results, its failure record and its config."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        """The run's name: the directory's."""
        return self.path.name

    # --- paths (each a `_Below` the directory) ---------------------------------------------------------

    results = _Below(RESULTS_NAME)
    failed = _Below(FAILED_NAME)
    run_config = _Below(RUN_CONFIG_NAME)
    config_yaml = _Below(CONFIG_YAML)
    overrides_yaml = _Below(".hydra/overrides.yaml")
    checkpoints = _Below(CHECKPOINTS_DIR)
    adapter = _Below(ADAPTER_DIR)
    records = _Below(RECORDS_DIR)
    launcher_log = _Below("launcher.log")

    def evaluation(self, name: str) -> Path:
        """The directory of one re-evaluation (`<task>-<mode>[-base]`); `write_evaluation` fills it."""
        return self.path / EVALUATIONS_DIR / name

    # --- the hold: one process at a time (perft_exp/run_lock.py) ----------------------------------------

    def hold(self) -> RunLock:
        """`with run.hold(): ...`: this process works here; raises RunDirHeld if a live process already
        does."""
        return RunLock(self.path)

    def holder(self) -> Holder | None:
        """The live process holding the directory (None when none does, or its hold is stale)."""
        found = read_holder(self.path / ".hold.json")
        return found if found is not None and found.alive() else None

    # --- checkpoints (the HF Trainer's, below checkpoints/) ----------------------------------------------

    def checkpoint_problem(self, ckpt: Path) -> str | None:
        """Why a complete checkpoint does not load (None when it does): its adapter config is missing, or one
        of its files (adapter tensors, optimizer, scheduler, RNG state, trainer state, ...) does not read
        back (perft_exp/files.py: unreadable)."""
        if not (ckpt / ADAPTER_CONFIG_NAME).is_file():
            return f"no {ADAPTER_CONFIG_NAME}"
        for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
            reason = unreadable(path)
            if reason:
                return f"{path.relative_to(ckpt)} is {reason}"
        return None

    def latest_checkpoint(self) -> str | None:
        """The newest checkpoint that loads: the one to resume from (None when the run has none).

        A directory without trainer_state.json (which the HF Trainer writes last) is a save that was cut
        off, not a checkpoint: it is skipped. A complete checkpoint with a file that does not read back (a
        node lost while it was copied, a disk that filled, a truncated transfer) is skipped too, with one
        warning line naming each and why, and the next older one is tried. RunDirCorrupt when there are
        checkpoints but none loads: starting over would drop the run's progress, so only `resume=false` does.
        """
        if not self.checkpoints.is_dir():
            return None
        found = sorted(
            (p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
            key=lambda p: int(p.name.split("-")[-1]),
            reverse=True,
        )
        torn: list[str] = []
        for ckpt in found:
            if not (ckpt / "trainer_state.json").exists():
                log.warning("skipping incomplete checkpoint %s (the run was stopped while saving it)", ckpt)
                continue
            problem = self.checkpoint_problem(ckpt)
            if problem is None:
                if torn:
                    log.warning(
                        "skipping checkpoints that do not load: %s; resuming from %s",
                        "; ".join(torn),
                        ckpt.name,
                    )
                return str(ckpt)
            torn.append(f"{ckpt.name} ({problem})")
        if torn:
            raise RunDirCorrupt(
                f"no checkpoint in {self.checkpoints} loads: {'; '.join(torn)}; "
                "relaunch with resume=false to start the run over"
            )
        return None

    def remove_torn_checkpoints(self) -> list[Path]:
        """Remove the checkpoints a failed save left half-written (to free the space they hold); returns
        them."""
        torn = [
            p
            for p in sorted(self.checkpoints.glob("checkpoint-*"))
            if not (p / "trainer_state.json").is_file()
        ]
        for path in torn:
            shutil.rmtree(path, ignore_errors=True)
        return torn

    def has_adapter(self) -> bool:
        """Whether a trained adapter was saved here."""
        return (self.adapter / ADAPTER_CONFIG_NAME).is_file()

    def adapter_config(self) -> dict | None:
        """The saved adapter's metadata (variant, PerftConfig, base-model signature), None without an
        adapter."""
        return json.loads((self.adapter / ADAPTER_CONFIG_NAME).read_text()) if self.has_adapter() else None

    # --- state and results ------------------------------------------------------------------------------

    def corrupt_files(self) -> list[CorruptFile]:
        """The directory's records that exist but cannot be read."""
        found = []
        for path in (self.results, self.run_config, self.failed, self.adapter / ADAPTER_CONFIG_NAME):
            try:
                if path.is_file():
                    _read_json(path)
            except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                found.append(CorruptFile(path, _reason(e)))
        try:
            spec = yaml.safe_load(self.config_yaml.read_text()) if self.config_yaml.is_file() else {}
            if not isinstance(spec, dict):
                found.append(CorruptFile(self.config_yaml, "not a YAML mapping"))
        except (OSError, ValueError, yaml.YAMLError) as e:
            found.append(CorruptFile(self.config_yaml, _reason(e)))
        return found

    def corrupt(self) -> CorruptFile | None:
        """The first unreadable record of the directory (None when all read)."""
        return next(iter(self.corrupt_files()), None)

    def state(self) -> str:
        """corrupt | finished | running | failed | started (checkpoints, no results) | pending."""
        if self.corrupt() is not None:
            return "corrupt"
        if self.results.is_file():
            return "finished"
        if self.holder() is not None:
            return "running"
        if self.failed.is_file():
            return "failed"
        if self.checkpoints.is_dir():
            return "started"
        return "pending"

    def read_results(self) -> dict | None:
        """The finished run's results (None when it has none)."""
        return json.loads(self.results.read_text()) if self.results.is_file() else None

    def write_results(self, results: dict, cfg: DictConfig) -> None:
        """The resolved config (config.yaml), then the results: results.json last, as the mark of a finished
        run."""
        atomic_write_bytes(self.config_yaml, OmegaConf.to_yaml(cfg, resolve=True).encode())
        atomic_write_json(self.results, results)

    def write_evaluation(self, name: str, record: dict) -> Path:
        """A re-evaluation's results, beside its per-question records; returns its directory."""
        out = self.evaluation(name)
        atomic_write_json(out / RESULTS_NAME, record)
        return out

    # --- failures ---------------------------------------------------------------------------------------

    def record_failure(self, error: str, kind: str, exc: BaseException | None = None, **extra) -> str | None:
        """failed.json: the first error line, its kind, and the traceback when there is one. A first record
        wins (under torchrun every rank fails; the first to fail holds the real error).

        Never raises for the disk (it runs inside failure handlers): returns why the record could not be
        written (`failed.json not written: ...`), else None."""
        if self.failed.is_file():
            return None
        record = {"error": error, "type": kind, **extra}
        if exc is not None:
            record["traceback"] = "".join(traceback.format_exception(exc))
        try:
            atomic_write_json(self.failed, record)
        except OSError as e:
            return f"{self.failed} not written either: {e.strerror or e}"
        return None

    def clear_failure(self) -> None:
        """A new attempt: the old failure is stale (a new one is recorded if it fails again)."""
        self.failed.unlink(missing_ok=True)

    def read_failure(self) -> str:
        """The recorded error of a failed attempt ("" without a readable record)."""
        try:
            return _read_json(self.failed).get("error", "")
        except (OSError, ValueError):
            return ""

    # --- the config the directory belongs to ------------------------------------------------------------

    def load_spec(self) -> DictConfig:
        """The resolved config the run was trained with (config.yaml, written with its results)."""
        return OmegaConf.load(self.config_yaml)

    def overrides(self) -> list[str]:
        """The command line's overrides of the run (Hydra's record of them), less Hydra's own keys."""
        if not self.overrides_yaml.is_file():
            return []
        return [
            o for o in yaml.safe_load(self.overrides_yaml.read_text()) or [] if not o.startswith("hydra.")
        ]

    def _recorded_identity(self) -> dict | None:
        if self.run_config.is_file():
            return _read_json(self.run_config)
        if self.config_yaml.is_file():  # a run finished before run_config.json existed
            return config_identity(OmegaConf.to_container(self.load_spec()))
        return None

    def check(self, cfg: DictConfig, record: bool = True) -> None:
        """A run directory belongs to one config: another config there is an error, not a silent reuse.

        Default names carry a hash of the config's difference from the defaults (config.run_name), so this
        fires for explicit `name=...` collisions, for edited YAML defaults, and for a rebuilt tiny model.
        `record`: write run_config.json on first use, or on `resume=false` (train.py); sweeps only check.
        """
        want = run_identity(cfg)
        # failed.json is left out: a new attempt replaces it anyway
        bad = [c for c in self.corrupt_files() if c.path.name != FAILED_NAME]
        if bad and cfg.resume:
            raise RunDirCorrupt(f"{bad[0]} ({len(bad)} unreadable files)" if len(bad) > 1 else str(bad[0]))
        for c in bad if record else ():  # resume=false: starting over, the unreadable records go
            log.warning("%s is unreadable (%s); removed, the run starts over", c.path, c.reason)
            c.path.unlink(missing_ok=True)
        have = self._recorded_identity()
        if have is None:
            if record:
                atomic_write_json(self.run_config, want)
            return
        a, b = flatten(_as_run(have)), flatten(want)
        # Keys on one side only are schema changes between versions of this code, not another experiment.
        diff = [k for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
        if not diff:
            return
        if not cfg.resume:  # starting over: the directory now belongs to this config
            if record:
                atomic_write_json(self.run_config, want)
            return
        shown = ", ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in diff[:3]) + (" ..." if len(diff) > 3 else "")
        raise RunDirConflict(
            f"{self.path} holds a run with another config ({shown}); choose another directory with name=..., "
            "or resume=false to start it over"
        )

    # --- finding runs -----------------------------------------------------------------------------------

    @classmethod
    def find(cls, root: str | Path, pattern: str = "*") -> Iterator[RunDir]:
        """Run directories at or below `root` whose name matches `pattern`, finished or failed (never a
        checkpoint or a re-evaluation)."""
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
                yield cls(run_dir)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e).splitlines()[0]


def config_identity(conf: dict) -> dict:
    """A resolved config (as a container) less the keys that may change between launches of one run."""
    return {k: v for k, v in conf.items() if k not in RELAUNCH_FREE and k != "hydra"}


def _as_run(ident: dict) -> dict:
    """An identity with its `perft` as the variant runs it (a LoRA baseline ignores the PEFT experts'
    form ...)."""
    from perft_exp.adapters.config import applicable

    return {**ident, "perft": applicable(ident["perft"])} if isinstance(ident.get("perft"), dict) else ident


def run_identity(cfg: DictConfig) -> dict:
    """What a run directory's results depend on: the resolved config (its `perft` as the variant runs it),
    and the tiny model's build key."""
    ident = _as_run(config_identity(OmegaConf.to_container(cfg, resolve=True)))
    pretrained = str(cfg.model.pretrained)
    if pretrained.startswith(
        "tiny:"
    ):  # a rebuilt tiny model (new spec or synthetic world) is another base model
        from perft_exp.models.tiny_spec import TINY_SPECS

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
