"""The LLM-Adapters JSON format: strict loading of train files and test sets, and the validation split.

A data dir is laid out as LLM-Adapters ships it:

    <data_dir>/commonsense_170k.json            train files (also math_50k, math_10k, math_14k, math_7k)
    <data_dir>/dataset/<TestSet>/test.json      one dir per test set, named as in COMMONSENSE/MATH_TEST_SETS

Each file is a JSON list of records `{"instruction", "input", "output", "answer"}`. Every defect
raises `DataError` naming the file and the record index: nothing is skipped silently. One exception,
as the authors' loader has it: a record with an empty `answer` is kept in a training file (training reads
`output` only) and left out of a test set (it cannot be scored); both are counted (`count_empty_answers`,
`load_test_sets(..., skipped=)`) and the run reports the counts in its results (`train.empty_answers`).
`scripts/fetch_data.py` downloads the files for users with a network.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

COMMONSENSE_TEST_SETS = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Easy",
    "ARC-Challenge",
    "openbookqa",
)
MATH_TEST_SETS = ("AddSub", "MultiArith", "SingleEq", "gsm8k", "AQuA", "SVAMP")
ALL_TEST_SETS = COMMONSENSE_TEST_SETS + MATH_TEST_SETS

# math_10k includes MAWPS training problems, which overlap these test sets.
CONTAMINATED = {"math_10k": ["AddSub", "MultiArith", "SingleEq"]}

# Fields a record must carry, by role. `input` may be "" but must be present in train files;
# test files only need what generation (instruction) and scoring (answer) read.
_TRAIN_FIELDS = ("instruction", "input", "output", "answer")
_TEST_FIELDS = ("instruction", "answer")
_OPTIONAL_TEST_FIELDS = ("input", "output")


log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file is missing, unreadable or malformed."""


def canonical_test_set(name: str) -> str:
    """The LLM-Adapters spelling of a test set name, matched case-insensitively."""
    for canonical in ALL_TEST_SETS:
        if canonical.lower() == name.lower():
            return canonical
    raise DataError(f"unknown test set {name!r}; allowed: {', '.join(ALL_TEST_SETS)}")


def contaminated_test_sets(train_file: str, test_sets: list[str]) -> list[str]:
    """The test sets (canonical names) whose training data overlaps `train_file`."""
    tainted = CONTAMINATED.get(Path(train_file).name.removesuffix(".json"), [])
    return [name for name in map(canonical_test_set, test_sets) if name in tainted]


def _read_records(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: no records")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i} is a {type(record).__name__}, not an object")
        for field in required:
            if field not in record:
                raise DataError(f"{path}: record {i} is missing field {field!r}")
        for field in required + optional:
            if field in record and not isinstance(record[field], str):
                raise DataError(
                    f"{path}: record {i} field {field!r} is a {type(record[field]).__name__}, not a string"
                )
        if not record["instruction"].strip():
            raise DataError(f"{path}: record {i} has an empty instruction")
    return data


def count_empty_answers(records: list[dict]) -> int:
    """How many records have an empty `answer` (kept for training, left out of scoring)."""
    return sum(not record["answer"].strip() for record in records)


def load_train(data_dir: str | Path, train_file: str) -> list[dict]:
    """Records of `<data_dir>/<train_file>.json` (the ".json" suffix is optional)."""
    name = train_file if train_file.endswith(".json") else f"{train_file}.json"
    return _read_records(Path(data_dir) / name, _TRAIN_FIELDS)


def _test_dir(data_dir: Path, name: str) -> Path:
    root = data_dir / "dataset"
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and child.name.lower() == name.lower():
                return child
    return root / name


def load_test_sets(
    data_dir: str | Path, names: list[str], skipped: dict[str, int] | None = None
) -> dict[str, list[dict]]:
    """{canonical name: records} from `<data_dir>/dataset/<name>/test.json`, dirs matched case-insensitively.

    Records with an empty answer cannot be scored: they are left out, counted in the log and, per set with
    any, in `skipped`."""
    sets = {}
    for name in map(canonical_test_set, names):
        records = _read_records(
            _test_dir(Path(data_dir), name) / "test.json", _TEST_FIELDS, _OPTIONAL_TEST_FIELDS
        )
        sets[name] = [{"input": "", **r} for r in records if r["answer"].strip()]
        if len(sets[name]) < len(records):
            log.warning(
                "%s: %d of %d test records have an empty answer; left out",
                name,
                len(records) - len(sets[name]),
                len(records),
            )
            if skipped is not None:
                skipped[name] = len(records) - len(sets[name])
    return sets


def load_from_hub(dataset_id: str, split: str = "train") -> list[dict]:
    """Records of a hub dataset in the LLM-Adapters format, for users with a network."""
    import datasets  # deferred: importing it costs about a second and only online users need it

    rows = datasets.load_dataset(dataset_id, split=split)
    records = [{field: row.get(field, "") for field in _TRAIN_FIELDS} for row in rows]
    for i, record in enumerate(records):
        for field in _TRAIN_FIELDS:
            if not isinstance(record[field], str):
                raise DataError(f"{dataset_id}[{split}]: record {i} field {field!r} is not a string")
        if not record["instruction"].strip():
            raise DataError(f"{dataset_id}[{split}]: record {i} has no 'instruction'")
    if not records:
        raise DataError(f"{dataset_id}[{split}]: no records")
    return records


def split_indices(n: int, val_size: int = 120, seed: int = 42) -> tuple[list[int], list[int]]:
    """(train, val) record indices exactly as the authors split: `datasets`' own
    `Dataset.train_test_split(test_size=val_size, shuffle=True, seed=seed)` on the n records, called on a
    dataset of their indices (it draws one numpy permutation; val is its first val_size entries, train the
    rest, both in permutation order)."""
    if val_size <= 0 or val_size >= n:
        raise DataError(f"val_size={val_size} must be in [1, {n - 1}] for {n} records")
    import datasets  # deferred: importing it costs about a second

    split = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(
        test_size=val_size, shuffle=True, seed=seed
    )
    return list(split["train"]["i"]), list(split["test"]["i"])


def split_validation(
    records: list[dict], val_size: int = 120, seed: int = 42
) -> tuple[list[dict], list[dict]]:
    """(train, val): the authors' held-out `val_size` records (split_indices);
    the same seed, the same split."""
    train, val = split_indices(len(records), val_size, seed)
    return [records[i] for i in train], [records[i] for i in val]
