"""Every config key carries its help as field metadata, and docs/configuration.md is what the schemas say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from perft_exp import config_reference
from perft_exp.config import compose

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@pytest.mark.parametrize(
    "group,schema", config_reference.GROUPS, ids=[g or "top" for g, _ in config_reference.GROUPS]
)
def test_every_field_has_help(group, schema):
    missing = [f.name for f in dataclasses.fields(schema) if not config_reference.help_of(f).strip()]
    assert not missing, f"{group or 'top level'}: fields without metadata help: {missing}"


def test_every_composed_key_is_in_the_reference():
    """The reference covers the whole composed tree: each key of the default config has a row."""
    text = config_reference.reference()
    cfg = compose([])
    for group, _ in config_reference.GROUPS:
        node = cfg[group] if group else cfg
        for key in node:
            if group == "" and key in {g for g, _ in config_reference.GROUPS}:
                continue
            name = f"{group}.{key}" if group else key
            assert f"| `{name}` |" in text, name


def test_the_doc_is_the_generated_reference():
    assert DOC.read_text() == config_reference.reference(), (
        "docs/configuration.md is stale: python -m perft_exp.config_reference --write docs/configuration.md"
    )


def test_the_reference_shows_types_defaults_and_help():
    rows = {
        key: (tp, default, text)
        for key, tp, default, text in config_reference.rows(config_reference.PerftConfig)
    }
    assert rows["top_p"][:2] == ("float | null", "null")
    assert rows["bottleneck"][:2] == ("int", "`16`")
    assert "top_p" in rows["top_p"][2]
