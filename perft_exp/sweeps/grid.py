"""A sweep file (`sweeps/<name>.yaml`) and the jobs of a multirun command line.

A multirun command line `variant=S,D perft.bottleneck=range(4,17,4) seed=1` is a list of overrides, each a
single value or a sweep (a list `a,b`, `choice(a,b)`, `range(start,stop[,step])`, or `glob(pattern)` over a
config group's options). Its jobs are the Cartesian product of the keys' value lists, in the order the keys
first appear (a key given twice keeps its first position and its last value), exactly as Hydra's basic
sweeper launches them; `expand` builds them with Hydra's public override parser only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from perft_exp.config import CONF_DIR, REPO_ROOT, setup

SWEEPS_DIR = REPO_ROOT / "sweeps"


class SweepError(ValueError):
    """A malformed sweep file, or a grid whose jobs collide or do not compose."""


def _config_loader():
    """Hydra's loader of conf/ (what `glob(...)` lists a config group's options with),
    through its public API."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    setup()  # the schemas are options of their groups for Hydra too
    if GlobalHydra.instance().is_initialized():
        return GlobalHydra.instance().config_loader()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return GlobalHydra.instance().config_loader()


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of a multirun command line, each a list of `key=value` overrides
    (see the module docstring)."""
    loader = _config_loader() if any("glob(" in o for o in overrides) else None
    axes: dict[str, list[str]] = {}
    for override in OverridesParser.create(config_loader=loader).parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise SweepError(
                f"{key}: an {override.value_type.name.lower()} has no list of jobs; "
                "sweep over a list, choice(...), range(...) or glob(...)"
            )
    return [list(job) for job in itertools.product(*axes.values())]


def fmt(value: Any) -> str:
    """A YAML value as an override's value: `true`, `null`, `4`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


@dataclass
class Sweep:
    """A sweep file (sweeps/<name>.yaml): fixed overrides, blocks of swept ones, env and description."""

    name: str
    fixed: dict[str, Any]
    blocks: list[dict[str, list]]
    description: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, name_or_path: str) -> Sweep:
        """A sweep by name (sweeps/<name>.yaml) or path, checked: SweepError says what is wrong."""
        path = Path(name_or_path)
        if not path.suffix:
            path = SWEEPS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise SweepError(f"no sweep {name_or_path!r}; choose one of {', '.join(list_sweeps())}")
        raw = yaml.safe_load(path.read_text()) or {}
        unknown = set(raw) - {"fixed", "blocks", "description", "env"}
        if unknown:
            raise SweepError(
                f"{path}: unknown keys {sorted(unknown)}; a sweep has fixed, blocks, env, description"
            )
        fixed = dict(raw.get("fixed") or {})
        for key, value in fixed.items():
            if isinstance(value, (list, dict)):
                raise SweepError(f"{path}: fixed.{key} must be a single value (put lists in a block)")
        blocks = []
        for i, block in enumerate(raw.get("blocks") or []):
            if not isinstance(block, dict) or not block:
                raise SweepError(
                    f"{path}: blocks[{i}] must be a non-empty mapping of override keys to values"
                )
            axes = {}
            for key, values in block.items():
                values = values if isinstance(values, list) else [values]
                if not values or any(isinstance(v, (list, dict)) for v in values):
                    raise SweepError(
                        f"{path}: blocks[{i}].{key} must be a value or a non-empty list of values"
                    )
                if key in fixed:
                    raise SweepError(f"{path}: blocks[{i}] sets {key!r}, which `fixed` already sets")
                axes[key] = values
            blocks.append(axes)
        if not blocks:
            raise SweepError(f"{path}: no blocks")
        env = {str(k): str(v) for k, v in (raw.get("env") or {}).items()}
        return cls(path.stem, fixed, blocks, raw.get("description", ""), env)

    def base_overrides(self) -> list[str]:
        """The fixed overrides and the W&B group, shared by every job."""
        return [f"{k}={fmt(v)}" for k, v in self.fixed.items()] + [f"logger.group={self.name}"]

    def block_overrides(self, block: dict[str, list], extra: list[str] = ()) -> list[str]:
        """One block as a Hydra multirun command line: `variant=R routing=n2k1,n2k2 perft.bottleneck=4,8`."""
        swept = [f"{k}={','.join(fmt(v) for v in values)}" for k, values in block.items()]
        return [*self.base_overrides(), *swept, *extra]

    def block_jobs(self, block: dict[str, list], extra: list[str] = ()) -> list[list[str]]:
        """The jobs Hydra's basic sweeper makes of one block (so `show` lists exactly what `run` runs)."""
        return expand(self.block_overrides(block, extra))

    def jobs(self, extra: list[str] = ()) -> list[list[str]]:
        """Every job of every block, each a list of overrides."""
        return [job for block in self.blocks for job in self.block_jobs(block, extra)]

    def size(self) -> int:
        """The number of jobs, counted without composing them."""
        return sum(len(list(itertools.product(*block.values()))) for block in self.blocks)


def list_sweeps() -> list[str]:
    """The names of the sweep files in sweeps/."""
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
