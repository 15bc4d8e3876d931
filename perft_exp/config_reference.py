"""Every config key with its type, default and help, read from the schema dataclasses' field metadata.

    python -m perft_exp.config_reference                 # print the reference (Markdown)
    python -m perft_exp.config_reference --write docs/configuration.md

The help text lives once, on the field (`field(default=..., metadata={"help": ...})`, as HF PEFT and
`HfArgumentParser` keep it); docs/configuration.md is this module's output, and a test keeps the two equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from perft_exp import config
from perft_exp.adapters.config import PerftConfig

# OmegaConf's marker of a value the config must set (omegaconf.MISSING); the config module owns OmegaConf.
MISSING = "???"

# The config groups in the order a reader meets them (README "Config groups and knobs"), then the top level.
GROUPS: tuple[tuple[str, type], ...] = (
    ("model", config.ModelConfig),
    ("perft", PerftConfig),
    ("task", config.TaskConfig),
    ("trainer", config.TrainerConfig),
    ("deepspeed", config.DeepSpeedConfig),
    ("logger", config.LoggerConfig),
    ("eval", config.EvalConfig),
    ("", config.TrainConfig),
)

HEADER = """# Configuration reference

Every key of the config tree (`conf/`), with its type, the schema's default and what it does. The config
files of a group (e.g. `conf/trainer/olmoe.yaml`) set other values; `python train.py --cfg job` prints the
composed config of a command. Set a key on the command line as `group.key=value` (`perft.bottleneck=8`).
Generated from the schemas' field help by `python -m perft_exp.config_reference --write
docs/configuration.md`; edit the help in `perft_exp/config.py` or `perft_exp/adapters/config.py`.
"""


def help_of(f: dataclasses.Field) -> str:
    """The field's help text (metadata "help"); "" when it has none."""
    return str(f.metadata.get("help", ""))


def _type_name(tp) -> str:
    if isinstance(tp, str):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{typing.get_origin(tp).__name__}[{args}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value == MISSING:  # set by the group's YAML file
        return "(from the group's file)"
    if dataclasses.is_dataclass(value):
        return "(group)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if value != "" else '`""`'


def rows(schema: type) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) per field of a schema dataclass, in declaration order; groups left out."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        out.append((f.name, _type_name(hints[f.name]), _default(f), help_of(f)))
    return out


def reference() -> str:
    """The whole reference as Markdown: one table per group."""
    parts = [HEADER]
    for group, schema in GROUPS:
        title = f"`{group}`" if group else "Top level"
        lines = [f"## {title}", "", "| key | type | default | help |", "|---|---|---|---|"]
        for key, tp, default, text in rows(schema):
            name = f"{group}.{key}" if group else key
            lines.append(
                f"| `{name}` | {tp.replace('|', '&#124;')} | {default} | {text.replace('|', '&#124;')} |"
            )
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", type=Path, help="write the reference to this file instead of printing it")
    args = parser.parse_args(argv)
    text = reference()
    if args.write:
        args.write.write_text(text)
        print(f"wrote {args.write}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
