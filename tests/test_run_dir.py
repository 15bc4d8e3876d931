"""The run directory (perft_exp.run_dir.RunDir): it belongs to one config, checked before any model loads; its
state and failure record; finding runs below a root."""

from __future__ import annotations

import json
import struct
import zipfile

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


# --- torn checkpoints: the newest that loads is resumed ---------------------------------------------------

# The files of a checkpoint as the HF Trainer and PerftTrainer write them, each read back by its own loader.
CHECKPOINT_FILES = {
    "adapter_model.safetensors": "safetensors",
    "adapter_config.json": "json",
    "optimizer.pt": "torch",
    "scheduler.pt": "torch",
    "rng_state.pth": "torch",
    "trainer_state.json": "json",
}


def _write_checkpoint(path):
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    save_file({"a.A": torch.randn(8, 16, generator=g), "a.B": torch.randn(16, 8, generator=g)}, path / "x")
    (path / "x").rename(path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "PERFT", "variant": "R"}))
    torch.save({"state": {0: {"exp_avg": torch.randn(64, generator=g)}}}, path / "optimizer.pt")
    torch.save({"last_epoch": 4, "_last_lr": [0.003]}, path / "scheduler.pt")
    torch.save({"cpu": torch.get_rng_state()}, path / "rng_state.pth")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": int(path.name.split("-")[1])}))


def _loads(path, kind) -> bool:
    """Whether the file's own loader reads it."""
    import torch
    from safetensors import safe_open

    try:
        if kind == "json":
            json.loads(path.read_text())
        elif kind == "torch":
            torch.load(path, weights_only=False)
        else:
            with safe_open(str(path), framework="pt") as f:
                [f.get_tensor(k) for k in f.keys()]
    except Exception:
        return False
    return True


@pytest.mark.parametrize("name", sorted(CHECKPOINT_FILES))
def test_a_torn_file_makes_the_relaunch_resume_the_newest_checkpoint_that_loads(name, tmp_path, caplog):
    run = RunDir(tmp_path)
    for step in (4, 8, 12):
        _write_checkpoint(run.checkpoints / f"checkpoint-{step}")
    for step in (8, 12):  # two torn ones, cut in half: a copy or a disk that stopped mid-file
        f = run.checkpoints / f"checkpoint-{step}" / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        assert not _loads(f, CHECKPOINT_FILES[name])  # the checker agrees with the real loader
    with caplog.at_level("WARNING", logger="perft_exp.run_dir"):
        assert run.latest_checkpoint() == str(run.checkpoints / "checkpoint-4")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("skipping checkpoints that do not load: checkpoint-12 (" + name + " is ")
    assert f"checkpoint-8 ({name} is " in line and line.endswith("resuming from checkpoint-4")
    assert "\n" not in line


def test_a_flipped_byte_in_an_optimizer_state_fails_its_crc(tmp_path):
    run = RunDir(tmp_path)
    _write_checkpoint(run.checkpoints / "checkpoint-4")
    f = run.checkpoints / "checkpoint-4" / "optimizer.pt"
    with zipfile.ZipFile(f) as z:  # the tensor's bytes: the largest member, stored after its local header
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(f.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    assert "CRC" in run.checkpoint_problem(run.checkpoints / "checkpoint-4")


def test_no_checkpoint_that_loads_is_one_line_and_resume_false_is_the_way_out(tmp_path):
    from perft_exp.run_dir import RunDirCorrupt

    run = RunDir(tmp_path)
    for step in (4, 8):
        _write_checkpoint(run.checkpoints / f"checkpoint-{step}")
        (run.checkpoints / f"checkpoint-{step}" / "scheduler.pt").write_bytes(b"")
    with pytest.raises(RunDirCorrupt) as err:
        run.latest_checkpoint()
    message = str(err.value)
    assert "\n" not in message and "checkpoint-8 (scheduler.pt is empty); checkpoint-4 (" in message
    assert message.endswith("relaunch with resume=false to start the run over")
    assert (run.checkpoints / "checkpoint-4").is_dir()  # nothing is deleted: the files are there to inspect
