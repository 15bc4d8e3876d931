"""A run directory belongs to one config (perft_exp.run_dir.check_run_dir), checked before any model loads."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from perft_exp.config import compose
from perft_exp.run_dir import RUN_CONFIG_NAME, check_run_dir


def test_first_launch_records_the_config_and_the_same_config_passes(tmp_path):
    cfg = compose([])
    check_run_dir(cfg, tmp_path)
    assert json.loads((tmp_path / RUN_CONFIG_NAME).read_text())["perft"]["variant"] == "R"
    check_run_dir(compose(["logger=none"]), tmp_path)  # the logger may change between launches


def test_another_config_is_refused_naming_the_key(tmp_path):
    check_run_dir(compose([]), tmp_path)
    with pytest.raises(ValueError, match=r"trainer\.learning_rate: 0\.003 -> 0\.1"):
        check_run_dir(compose(["trainer.learning_rate=0.1"]), tmp_path)


def test_resume_false_takes_the_directory_over(tmp_path):
    check_run_dir(compose([]), tmp_path)
    check_run_dir(compose(["trainer.learning_rate=0.1", "resume=false"]), tmp_path)
    assert json.loads((tmp_path / RUN_CONFIG_NAME).read_text())["trainer"]["learning_rate"] == 0.1


def test_keys_added_by_a_newer_version_are_not_a_change(tmp_path):
    check_run_dir(compose([]), tmp_path)
    old = json.loads((tmp_path / RUN_CONFIG_NAME).read_text())
    del old["trainer"]["seed"]  # as if written before the key existed
    (tmp_path / RUN_CONFIG_NAME).write_text(json.dumps(old))
    check_run_dir(compose([]), tmp_path)


def test_runs_from_before_run_config_are_checked_against_their_config_yaml(tmp_path):
    OmegaConf.save(compose(["variant=S"]), tmp_path / "config.yaml", resolve=True)
    with pytest.raises(ValueError, match=r"perft\.variant: 'S' -> 'R'"):
        check_run_dir(compose([]), tmp_path)


def test_state_and_failure_record(tmp_path):
    """failed.json holds the first error line and the traceback; the first record wins (torchrun ranks)."""
    from perft_exp.run_dir import FAILED_NAME, clear_failure, read_failure, record_failure, state

    assert state(tmp_path) == "pending"
    try:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    except RuntimeError as e:
        record_failure(
            tmp_path, "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "OOM", exc=e
        )
    record_failure(tmp_path, "a later rank's error", "ChildFailedError")
    assert state(tmp_path) == "failed" and read_failure(tmp_path).startswith(
        "OutOfMemoryError: CUDA out of memory"
    )
    assert "Traceback" in json.loads((tmp_path / FAILED_NAME).read_text())["traceback"]
    clear_failure(tmp_path)
    assert state(tmp_path) == "pending"
    (tmp_path / "results.json").write_text("{}")
    assert state(tmp_path) == "finished"


def test_a_conflict_is_refused_without_recording_when_only_checking(tmp_path):
    """Sweeps check a run directory the way train.py does, but never write its run_config.json."""
    from perft_exp.run_dir import RunDirConflict

    check_run_dir(compose([]), tmp_path, record=False)
    assert not (tmp_path / RUN_CONFIG_NAME).exists()
    check_run_dir(compose([]), tmp_path)
    with pytest.raises(RunDirConflict, match=r"trainer\.max_steps"):
        check_run_dir(compose(["trainer=debug"]), tmp_path, record=False)
