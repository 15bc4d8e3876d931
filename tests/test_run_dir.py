"""The run directory (perft_exp.run_dir.RunDir): it belongs to one config, checked before any model loads; its
state and failure record; finding runs below a root."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from perft_exp.config import compose
from perft_exp.run_dir import RUN_CONFIG_NAME, RunDir


def check_run_dir(cfg, path, record=True):
    RunDir(path).check(cfg, record=record)


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
    from perft_exp.run_dir import FAILED_NAME

    run = RunDir(tmp_path)
    assert run.state() == "pending"
    try:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    except RuntimeError as e:
        run.record_failure("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "OOM", exc=e)
    run.record_failure("a later rank's error", "ChildFailedError")
    assert run.state() == "failed" and run.read_failure().startswith("OutOfMemoryError: CUDA out of memory")
    assert "Traceback" in json.loads((tmp_path / FAILED_NAME).read_text())["traceback"]
    run.clear_failure()
    assert run.state() == "pending"
    (tmp_path / "checkpoints").mkdir()
    assert run.state() == "started"
    (tmp_path / "results.json").write_text("{}")
    assert run.state() == "finished"


def test_a_conflict_is_refused_without_recording_when_only_checking(tmp_path):
    """Sweeps check a run directory the way train.py does, but never write its run_config.json."""
    from perft_exp.run_dir import RunDirConflict

    check_run_dir(compose([]), tmp_path, record=False)
    assert not (tmp_path / RUN_CONFIG_NAME).exists()
    check_run_dir(compose([]), tmp_path)
    with pytest.raises(RunDirConflict, match=r"trainer\.max_steps"):
        check_run_dir(compose(["trainer=debug"]), tmp_path, record=False)


def test_find_skips_checkpoints_and_re_evaluations_and_matches_names(tmp_path):
    """RunDir.find: finished and failed runs at or below a root; never a checkpoint or a re-evaluation."""
    for name in ("toy-R", "toy-S", "other"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    (tmp_path / "runs" / "toy-R" / "results.json").write_text("{}")
    RunDir(tmp_path / "runs" / "toy-S").record_failure("boom", "RuntimeError")
    (tmp_path / "runs" / "other" / "results.json").write_text("{}")
    RunDir(tmp_path / "runs" / "toy-R").write_evaluation("synthetic_math-greedy", {"eval": {}})
    (tmp_path / "runs" / "toy-R" / "checkpoints" / "checkpoint-8").mkdir(parents=True)
    (tmp_path / "runs" / "toy-R" / "checkpoints" / "checkpoint-8" / "results.json").write_text("{}")
    found = [r.name for r in RunDir.find(tmp_path, "toy-*")]
    assert found == ["toy-R", "toy-S"]
    assert [r.name for r in RunDir.find(tmp_path / "runs" / "other")] == ["other"]  # the root itself is a run


def test_results_spec_and_overrides_read_back(tmp_path):
    """What train.py writes (the resolved config beside the results) and Hydra's overrides record read
    back."""
    cfg = compose(["variant=S"])
    run = RunDir(tmp_path)
    run.write_results({"variant": "S"}, cfg)
    assert run.state() == "finished" and run.read_results() == {"variant": "S"}
    assert run.load_spec().perft.variant == "S"
    assert run.overrides() == []
    run.overrides_yaml.parent.mkdir()
    run.overrides_yaml.write_text("- variant=S\n- hydra.verbose=true\n- perft.bottleneck=4\n")
    assert run.overrides() == ["variant=S", "perft.bottleneck=4"]


def test_output_root_places_runs_and_is_not_part_of_a_runs_identity(tmp_path):
    cfg = compose([f"output_root={tmp_path}"])
    assert cfg.output_dir.startswith(str(tmp_path / "runs" / "synthetic_commonsense" / "tiny_olmoe"))
    assert compose([]).output_dir.startswith("outputs/runs/")
    check_run_dir(compose([]), tmp_path)
    check_run_dir(cfg, tmp_path)  # the same run, written elsewhere


def test_partial_checkpoint_is_skipped(tmp_path):
    run = RunDir(tmp_path)
    good, partial = run.checkpoints / "checkpoint-4", run.checkpoints / "checkpoint-8"
    for d in (good, partial):
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
    (good / "trainer_state.json").write_text("{}")
    (partial / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert run.latest_checkpoint() == str(good)
    assert RunDir(tmp_path / "never_started").latest_checkpoint() is None


def test_torn_checkpoints_are_removed(tmp_path):
    run = RunDir(tmp_path)
    for name in ("checkpoint-4", "checkpoint-8"):
        (run.checkpoints / name).mkdir(parents=True)
        (run.checkpoints / name / "optimizer.pt").write_bytes(b"x")
    (run.checkpoints / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert run.remove_torn_checkpoints() == [run.checkpoints / "checkpoint-8"]
    assert [p.name for p in run.checkpoints.iterdir()] == ["checkpoint-4"]
