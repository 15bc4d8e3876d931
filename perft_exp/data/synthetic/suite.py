"""Assembling, writing and caching the synthetic suites in the LLM-Adapters layout.

    <root>/synthetic_commonsense.json, <root>/synthetic_math.json     training records
    <root>/dataset/<TestSet>/test.json                                  test sets (real names)

Test sets are drawn first, from the world's held-out facts, each fact asked equally often (the
i-th question of a set asks about its i-th subject, cycling); training records are drawn from the
other facts, mixed over the test sets' formats, and never repeat a test question.

    from perft_exp.data.synthetic import ensure_suite
    root = ensure_suite("commonsense", "data/synthetic")   # generates once, reuses after
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from perft_exp.data.formats import COMMONSENSE_TEST_SETS, MATH_TEST_SETS
from perft_exp.data.synthetic import arithmetic_problems, commonsense, math
from perft_exp.data.synthetic.commonsense import Generator, Record
from perft_exp.data.synthetic.world import build_world
from perft_exp.files import atomic_write_json

# Bump CORPUS_VERSION when the world, the templates, the corpus or the CORPUS_SUITES change (tiny
# models hash it into their cache key: a new version is a new model), SUITE_VERSION when a suite's
# generators change (suites record it in their metadata and are regenerated).
CORPUS_VERSION = "5"
SUITE_VERSION = "6"

GENERATORS: dict[str, dict[str, Generator]] = {"commonsense": commonsense.GENERATORS, "math": math.GENERATORS}
TEST_SETS = {"commonsense": COMMONSENSE_TEST_SETS, "math": MATH_TEST_SETS}
TRAIN_FILES = {"commonsense": "synthetic_commonsense.json", "math": "synthetic_math.json"}
DEFAULT_SIZES = {"commonsense": (1000, 64), "math": (2000, 64)}  # (n_train, n_test per set)
assert all(tuple(GENERATORS[k]) == tuple(TEST_SETS[k]) for k in TEST_SETS)

# The suites the pre-training corpus and the tokenizer draw their words from: the suites as they were
# at CORPUS_VERSION 5, when synthetic_math asked arithmetic word problems (`arithmetic_problems`).
# Rewording a suite must not change the corpus, or the shipped model changes with it; a suite may
# use only words of the corpus (tests check). The arithmetic suite keeps the math suite's rng name.
CORPUS_SUITES: dict[str, dict[str, Generator]] = {
    "commonsense": commonsense.GENERATORS,
    "arithmetic": arithmetic_problems.GENERATORS,
}
CORPUS_SIZES = {"commonsense": (1000, 64), "arithmetic": (2000, 100)}
_RNG_NAMES = {"arithmetic": "math"}


def _distinct(
    generate: Generator, rng: random.Random, split: str, n: int, seen: set[str], where: str
) -> list[Record]:
    """n records new to `seen` (updated), the i-th made with index i (its subject), then shuffled."""
    world = build_world()
    out: list[Record] = []
    for i in range(n):
        for _ in range(200):
            rec = generate(world, rng, split, i)
            if rec["instruction"] not in seen:
                seen.add(rec["instruction"])
                out.append(rec)
                break
        else:
            raise ValueError(f"{where}: only {len(out)} distinct {split} questions, asked for {n}")
    rng.shuffle(out)
    return out


def make_suite(
    kind: str, n_train: int, n_test: int, seed: int = 0
) -> tuple[list[Record], dict[str, list[Record]]]:
    """(training records mixed over the test sets' formats, {test set: records});
    deterministic in the args."""
    tables = {**CORPUS_SUITES, **GENERATORS}
    if kind not in tables:
        raise ValueError(f"unknown suite kind {kind!r}; expected one of {sorted(tables)}")
    rng = random.Random(f"{_RNG_NAMES.get(kind, kind)}-{seed}")
    seen: set[str] = set()
    table = tables[kind]
    tests = {name: _distinct(gen, rng, "test", n_test, seen, f"{kind}/{name}") for name, gen in table.items()}
    per_set = [n_train // len(table) + (i < n_train % len(table)) for i in range(len(table))]
    train = [
        rec
        for (name, gen), k in zip(table.items(), per_set)
        for rec in _distinct(gen, rng, "train", k, seen, f"{kind}/{name}")
    ]
    rng.shuffle(train)
    return train, tests


def _meta(kind: str, n_train: int | None, n_test: int | None, seed: int) -> dict[str, object]:
    """What a written suite was made from; None sizes are the kind's defaults."""
    default_train, default_test = DEFAULT_SIZES.get(kind, (0, 0))
    return {
        "kind": kind,
        "n_train": default_train if n_train is None else n_train,
        "n_test": default_test if n_test is None else n_test,
        "seed": seed,
        "version": SUITE_VERSION,
    }


def write_suite(
    kind: str, out_dir: str | Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0
) -> Path:
    """Write `kind`'s training file and test sets under `out_dir` (LLM-Adapters layout); returns out_dir."""
    meta = _meta(kind, n_train, n_test, seed)
    out = Path(out_dir)
    train, tests = make_suite(kind, meta["n_train"], meta["n_test"], seed)  # type: ignore[arg-type]
    for name, records in tests.items():
        atomic_write_json(out / "dataset" / name / "test.json", records)
    atomic_write_json(out / TRAIN_FILES[kind], train)
    # Written last: its presence (with matching args) marks a complete suite for ensure_suite.
    atomic_write_json(out / f".{kind}.meta.json", meta)
    return out


def ensure_suite(
    kind: str, root: str | Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0
) -> Path:
    """`root` holding `kind`'s suite, generated on first use and when the args or the generator change."""
    root = Path(root)
    want = _meta(kind, n_train, n_test, seed)
    meta = root / f".{kind}.meta.json"
    if meta.exists() and json.loads(meta.read_text()) == want:
        return root
    return write_suite(kind, root, want["n_train"], want["n_test"], seed)  # type: ignore[arg-type]
