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
