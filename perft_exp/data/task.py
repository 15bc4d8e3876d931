"""A run's data: training records split into train/validation, and the test sets, from a task config.

Synthetic tasks are generated into `task.data_dir` on first use; real ones are read from an
LLM-Adapters directory, or from a `datasets` hub id when the user is online and has no local copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from perft_exp.data.formats import (
    count_empty_answers,
    load_from_hub,
    load_test_sets,
    load_train,
    split_validation,
)

if TYPE_CHECKING:
    from perft_exp.config import TaskConfig


@dataclass
class TaskData:
    """A task's records: training, validation and test sets, and the counts of empty answers."""

    train: list[dict]
    val: list[dict]
    tests: dict[str, list[dict]] = field(default_factory=dict)
    # Records with an empty answer: {"train": kept in the training file, <test set>: left out of it}.
    empty_answers: dict[str, int] = field(default_factory=dict)


def load_task_data(task: TaskConfig, train: bool = True) -> TaskData:
    """The task's records; `train=False`: the test sets only (evaluation needs no training file)."""
    data_dir = Path(task.data_dir)
    if task.synthetic:
        from perft_exp.data.synthetic import ensure_suite

        ensure_suite(task.kind, data_dir)
    train_recs, val, empty = [], [], {}
    if train:
        records = (
            load_from_hub(task.hub_id, "train")
            if task.hub_id and not data_dir.is_dir()
            else load_train(data_dir, task.train_file)
        )
        empty["train"] = count_empty_answers(records)
        train_recs, val = (
            split_validation(records, task.val_size, task.val_seed) if task.val_size else (records, [])
        )
        if task.max_train_examples:
            train_recs = train_recs[: task.max_train_examples]
    tests = load_test_sets(data_dir, list(task.test_sets), skipped=empty) if task.test_sets else {}
    if task.max_test_examples:
        tests = {name: recs[: task.max_test_examples] for name, recs in tests.items()}
    return TaskData(train_recs, val, tests, empty)
