"""The paper's grids in sweeps/*.yaml: exact job counts, distinct jobs,
every job composes; `show` is a dry run."""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from perft_exp.config import REPO_ROOT
from perft_exp.sweeps import cli as sweep_cli
from perft_exp.sweeps import grid as sweep_grid
from perft_exp.sweeps import jobs as sweep_jobs
from perft_exp.sweeps import launch as sweep_launch

PAPER_GRIDS = {
    "olmoe_commonsense": 100,
    "olmoe_math": 52,
    "mixtral_commonsense": 12,
    "mixtral_math": 3,
    "olmoe_commonsense_authors": 100,
    "olmoe_math_authors": 52,
}
SMALL = ["mixtral_commonsense", "mixtral_math", "bottleneck_ablation", "toy"]


def test_every_grid_is_listed():
    assert set(PAPER_GRIDS) | {"bottleneck_ablation", "toy"} <= set(sweep_grid.list_sweeps())


@pytest.mark.parametrize("name, count", sorted(PAPER_GRIDS.items()))
def test_paper_grid_sizes_and_distinct_jobs(name, count):
    sweep = sweep_grid.Sweep.load(name)
    jobs = sweep.jobs()
    assert len(jobs) == sweep.size() == count
    assert len({frozenset(job) for job in jobs}) == count  # no job listed twice
    assert all(f"logger.group={name}" in job for job in jobs)


def _perft_knobs(job: list[str]) -> tuple:
    knobs = dict(o.split("=", 1) for o in job)
    return knobs["variant"], knobs.get("routing"), knobs.get("perft.num_experts"), knobs["perft.bottleneck"]


def test_olmoe_commonsense_matches_the_authors_grid():
    jobs = [_perft_knobs(j) for j in sweep_grid.Sweep.load("olmoe_commonsense").jobs()]
    pairs = [
        "n2k1",
        "n2k2",
        "n4k1",
        "n4k2",
        "n4k4",
        "n8k1",
        "n8k2",
        "n8k4",
        "n8k8",
        "n16k1",
        "n16k2",
        "n16k4",
        "n16k8",
        "n32k8",
        "n64k8",
    ]
    expected = {("R", p, None, str(r)) for p, r in itertools.product(pairs, (4, 8, 16, 32))}
    expected |= {("R", p, None, "64") for p in ("n2k1", "n2k2", "n4k4", "n8k8", "n16k8")} | {
        ("R", "n2k2", None, "128")
    }
    expected |= {("D", None, str(n), str(r)) for n, r in itertools.product((2, 4, 8), (4, 8, 16, 32))}
    expected |= {("S", None, None, str(r)) for r in (4, 8, 16, 32, 64)}
    expected |= {("E", None, None, str(r)) for r in (2, 4, 8, 16, 32, 64)}
    expected |= {("qv_lora", None, None, str(2**i)) for i in range(11)}
    assert set(jobs) == expected and len(jobs) == 100


def test_toy_runs_every_config_with_three_seeds():
    jobs = [dict(o.split("=", 1) for o in job) for job in sweep_grid.Sweep.load("toy").jobs()]
    configs = Counter(tuple(sorted((k, v) for k, v in job.items() if k != "seed")) for job in jobs)
    assert len(jobs) == 45 and len(configs) == 15 and set(configs.values()) == {3}
    assert {job["seed"] for job in jobs} == {"0", "1", "2"}


def test_bottleneck_ablation_is_one_variant_over_six_sizes():
    jobs = [_perft_knobs(j) for j in sweep_grid.Sweep.load("bottleneck_ablation").jobs()]
    assert len({j[:3] for j in jobs}) == 1
    assert sorted(int(j[3]) for j in jobs) == [2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("name", SMALL)
def test_small_sweeps_compose_with_distinct_run_dirs(name):
    jobs = sweep_jobs.check_sweep(sweep_grid.Sweep.load(name))  # raises on a bad job or a shared run dir
    assert len({job.run_dir for job in jobs}) == len(jobs)


@pytest.mark.parametrize("name", ["olmoe_commonsense", "olmoe_math"])
def test_each_block_of_the_large_grids_composes(name):
    sweep = sweep_grid.Sweep.load(name)
    for block in sweep.blocks:
        jobs = sweep.block_jobs(block)
        for overrides in {tuple(jobs[0]), tuple(jobs[-1])}:
            job = sweep_jobs.check_job(list(overrides))
            assert job.run_dir.parts[-3:-1] == (
                "commonsense" if "commonsense" in name else "math",
                "olmoe_1b_7b",
            )


# What the authors' evaluate scripts generate (their per-model shell scripts: --max_new_tokens 4 / 256).
AUTHORS_MAX_NEW_TOKENS = {"commonsense": 4, "math": 256}


def _paper_model_sweeps() -> list[str]:
    """Every sweep whose model is a real one (not the tiny embedded default's)."""
    names = sweep_grid.list_sweeps()
    return [n for n in names if not str(sweep_grid.Sweep.load(n).fixed["model"]).startswith("tiny")]


@functools.cache
def _composed(name: str) -> tuple:
    """(job, composed config) for every job of a sweep, composed once for all the tests that read them."""
    from perft_exp.config import compose

    return tuple((job, compose(job)) for job in sweep_grid.Sweep.load(name).jobs())


def test_every_job_of_every_paper_sweep_evaluates_with_the_authors_protocol():
    from perft_exp.evaluation.evaluator import max_new_tokens_for

    names = _paper_model_sweeps()
    assert set(PAPER_GRIDS) | {"bottleneck_ablation"} <= set(names)
    for name in names:
        for job, cfg in _composed(name):
            ev, kind = cfg.eval, cfg.task.kind
            assert ev.mode == "paper", (name, job)
            tokens = max_new_tokens_for(ev.mode, kind, ev.max_new_tokens)
            assert tokens == AUTHORS_MAX_NEW_TOKENS[kind], (name, job)


@pytest.mark.parametrize("name", ["olmoe_commonsense", "olmoe_math"])
def test_the_authors_sweep_is_the_grid_run_for_run_as_the_authors_ran_it(name):
    ours, theirs = sweep_grid.Sweep.load(name), sweep_grid.Sweep.load(f"{name}_authors")
    assert sorted(map(_perft_knobs, theirs.jobs())) == sorted(map(_perft_knobs, ours.jobs()))
    dirs = set()
    for job, cfg in _composed(theirs.name):
        assert (cfg.eval.mode, cfg.eval.protocol, cfg.task.prompt) == ("paper", "authors", "authors"), job
        assert (cfg.task.val_size, cfg.task.val_seed, cfg.perft.dropout_scope) == (120, 42, "expert"), job
        p = cfg.perft
        authors_r = (p.authors_weighting_defect, p.router_init, p.router_dtype) == (True, "authors", "model")
        assert authors_r == (p.variant == "R"), job
        assert cfg.name.startswith("authors-") and cfg.name not in dirs
        dirs.add(cfg.name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["olmoe_commonsense", "olmoe_math"])
def test_every_job_of_the_large_grids_composes(name):
    jobs = sweep_jobs.check_sweep(sweep_grid.Sweep.load(name))
    assert len({job.run_dir for job in jobs}) == PAPER_GRIDS[name]


def test_show_is_a_dry_run(monkeypatch, capsys):
    import transformers

    import perft_exp.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("`sweep.py show` must not load a model")

    monkeypatch.setattr(loading, "load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", refuse)
    assert sweep_cli.main(["show", "mixtral_math"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len([line for line in out if line.strip()[:1].isdigit()]) == 3
    assert "mixtral_math: 3 jobs" in out[3]
    # the real data is absent here: a note, not a failure
    assert any(line.startswith("note: task.data_dir=") for line in out)


def test_block_becomes_one_multirun_command():
    sweep = sweep_grid.Sweep.load("mixtral_math")
    assert sweep.block_overrides(sweep.blocks[0], ["deepspeed=zero3"]) == [
        "model=mixtral_8x7b",
        "task=math",
        "trainer=mixtral",
        "eval=paper",
        "logger.group=mixtral_math",
        "variant=R",
        "routing=n2k2,n8k2",
        "perft.bottleneck=8",
        "deepspeed=zero3",
    ]


def test_extra_overrides_reach_every_job_and_win():
    sweep = sweep_grid.Sweep.load("toy")
    jobs = sweep.jobs(["trainer=debug"])
    assert all("trainer=debug" in job and "trainer=tiny" not in job for job in jobs)
    assert sweep.env == {"OMP_NUM_THREADS": "1"}


def test_bad_sweep_files_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fixed: {model: tiny_olmoe}\nblocks:\n  - {model: [tiny_olmoe]}\n")
    with pytest.raises(sweep_grid.SweepError, match="already sets"):
        sweep_grid.Sweep.load(str(bad))
    clash = tmp_path / "clash.yaml"
    clash.write_text("blocks:\n  - {variant: S, perft.bottleneck: [4, 4]}\n")
    with pytest.raises(sweep_grid.SweepError, match="share a run directory"):
        sweep_jobs.check_sweep(sweep_grid.Sweep.load(str(clash)))
    with pytest.raises(sweep_grid.SweepError, match="no sweep"):
        sweep_grid.Sweep.load("no_such_grid")


def test_gpu_groups():
    assert sweep_launch.gpu_groups("0,1,2,3", 2) == [["0", "1"], ["2", "3"]]
    with pytest.raises(sweep_grid.SweepError):
        sweep_launch.gpu_groups("0,1,2", 2)


def test_gpus_launcher_pins_devices_records_failures_and_skips_finished(tmp_path, monkeypatch):
    fake = tmp_path / "fake_train.py"  # stands in for train.py: writes results.json or fails like the app
    fake.write_text(
        "import json, os, sys\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:])\n"
        "if args['fail'] == '1':\n"
        "    print('error: perft.bottleneck=0 must be > 0', file=sys.stderr); sys.exit(2)\n"
        "open(os.path.join(args['out'], 'results.json'), 'w').write(json.dumps(\n"
        "    {'gpus': os.environ['CUDA_VISIBLE_DEVICES'], 'env': os.environ['SWEEP_TEST']}))\n"
    )
    monkeypatch.setattr(sweep_launch, "TRAIN_PY", fake)
    jobs = [
        sweep_jobs.Job([f"out={tmp_path / name}", f"fail={int(name == 'bad')}"], tmp_path / name)
        for name in ("a", "b", "bad", "done")
    ]
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")

    sweep_launch.run_on_gpus(jobs, [["0"], ["1"]], env={"SWEEP_TEST": "7"})
    assert [job.state() for job in jobs] == ["finished", "finished", "failed", "finished"]
    finished = [json.loads((tmp_path / n / "results.json").read_text()) for n in "ab"]
    assert {r["gpus"] for r in finished} <= {"0", "1"} and {r["env"] for r in finished} == {"7"}
    assert json.loads((tmp_path / "done" / "results.json").read_text()) == {}  # skipped, not rerun
    failure = json.loads((tmp_path / "bad" / "failed.json").read_text())
    assert "must be > 0" in failure["error"] and failure["type"] == "exit code 2"


def test_local_jobs_run_in_a_cpu_pool(monkeypatch):
    """`run --jobs N`: N CPU worker slots, no GPU pinned; `--jobs 1` keeps Hydra's sequential multirun."""
    calls = {}
    monkeypatch.setattr(
        sweep_launch,
        "run_on_gpus",
        lambda jobs, groups, env=None, cpu=False: calls.update(groups=groups, cpu=cpu, n=len(jobs)),
    )
    monkeypatch.setattr(sweep_launch, "run_multirun", lambda *a, **k: calls.update(multirun=True))
    assert sweep_cli.parse_args(["run", "toy", "--jobs", "2"]).jobs == 2
    sweep_cli.main(["run", "toy", "--jobs", "2"])
    assert calls["groups"] == [["0"], ["1"]] and calls["cpu"] is True and calls["n"] == 45
    calls.clear()
    sweep_cli.main(["run", "toy"])
    assert calls == {"multirun": True}


def test_overrides_may_follow_the_options():
    args = sweep_cli.parse_args(["run", "toy", "a=1", "--launcher", "gpus", "--gpus", "0,1", "b=2"])
    assert args.overrides == ["a=1", "b=2"] and args.launcher == "gpus"
    with pytest.raises(SystemExit):
        sweep_cli.parse_args(["run", "toy", "--no-such-flag"])


def test_slurm_launcher_overrides():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [slurm] extra is not installed")
    args = sweep_cli.parse_args(
        ["run", "olmoe_math", "--launcher", "slurm", "--partition", "gpu", "--timeout-min", "600"]
    )
    assert sweep_launch.slurm_overrides(args) == [
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=1",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=600",
    ]
    args.gpus_per_job = 4
    with pytest.raises(sweep_grid.SweepError, match="--launcher gpus"):
        sweep_launch.slurm_overrides(args)


# --- issue 14: sweep bookkeeping never mixes runs of different configs --------------------------------


@pytest.fixture
def launches(monkeypatch, tmp_path):
    """Run sweep commands in an empty directory, recording what would be launched instead of launching it."""
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(
        sweep_launch, "run_on_gpus", lambda jobs, *a, **k: calls.append([j.run_dir for j in jobs])
    )
    monkeypatch.setattr(
        sweep_launch, "run_multirun", lambda sweep, jobs, *a, **k: calls.append([j.run_dir for j in jobs])
    )
    return calls


def test_a_debug_run_of_the_toy_sweep_gets_its_own_directories():
    plain = {job.run_dir for job in sweep_jobs.check_sweep(sweep_grid.Sweep.load("toy"))}
    debug = {job.run_dir for job in sweep_jobs.check_sweep(sweep_grid.Sweep.load("toy"), ["trainer=debug"])}
    assert not plain & debug
    assert "outputs/runs/synthetic_commonsense/tiny_olmoe/toy-qv_lora-r2-s0" in {str(d) for d in plain}
    # Pinned to the paper's LoRA form (the tiny model's default is the adapter form): the form stays out of
    # the names, as when the toy tables of docs/toy_sweep.md was measured.
    assert "outputs/runs/synthetic_commonsense/tiny_olmoe/toy-R-n4-k2-r8-s0" in {str(d) for d in plain}


def test_a_run_directory_holding_another_config_is_a_conflict_not_finished(launches, capsys):
    """As train.py refuses such a directory, status shows it and run launches nothing (item 2)."""
    from perft_exp.config import compose
    from perft_exp.run_dir import RunDir

    first = sweep_grid.Sweep.load("toy").jobs()[0]
    run_dir = sweep_jobs.check_job(first).run_dir
    RunDir(run_dir).check(compose([*first, "trainer=debug"]))  # a debug run wrote here (before the fix)
    (run_dir / "results.json").write_text("{}")
    assert sweep_cli.main(["status", "toy"]) == 0
    out = capsys.readouterr().out
    assert f"conflict  {run_dir}  {run_dir} holds a run with another config" in out
    assert "toy: 1 conflict, 44 pending" in out
    assert sweep_cli.main(["run", "toy", "--jobs", "2"]) == 2 and launches == []
    assert "holds a run with another config" in capsys.readouterr().err


def test_run_refuses_a_grid_without_its_data(launches, capsys):
    """`--launcher gpus` (or any) launches nothing when the data directory is missing (item 5)."""
    assert sweep_cli.main(["run", "mixtral_math", "--launcher", "gpus", "--gpus", "0,1"]) == 2
    assert launches == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 jobs cannot run: task.data_dir=" in err[0]


def test_status_looks_at_the_jobs_of_the_last_run(launches, capsys):
    """`status` without overrides shows the jobs `run` launched, not the plain grid's (item 5)."""
    sweep_cli.main(["run", "toy", "--jobs", "2", "trainer=debug"])
    launched = set(launches[0])
    capsys.readouterr()
    sweep_cli.main(["status", "toy"])
    captured = capsys.readouterr()
    listed = {Path(line.split()[1]) for line in captured.out.splitlines() if line.startswith("pending")}
    assert listed == launched and "last run with: trainer=debug" in captured.err
    sweep_cli.main(["status", "toy", "trainer=tiny"])  # explicit overrides win
    assert (
        not {
            Path(line.split()[1])
            for line in capsys.readouterr().out.splitlines()
            if line.startswith("pending")
        }
        & launched
    )


def test_the_first_error_line_of_a_job_log_is_kept_not_the_launchers():
    log = (
        "W1126 torch.distributed.run: *****\n"
        "error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "Traceback (most recent call last):\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
    )
    assert sweep_launch.first_error(log) == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert sweep_launch.first_error("Killed\n") is None


def test_slurm_without_its_extra_is_one_line(monkeypatch, capsys):
    """No hydra_plugins at all (the [slurm] extra missing): a hint, not ModuleNotFoundError (item 4)."""
    from perft_exp import cli

    for name in [m for m in sys.modules if m.startswith("hydra_plugins")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hydra_plugins", None)  # as if the namespace package did not exist
    args = sweep_cli.parse_args(["run", "olmoe_math", "--launcher", "slurm"])
    with pytest.raises(sweep_grid.SweepError, match=r"pip install -e '\.\[slurm\]'"):
        sweep_launch.slurm_overrides(args)
    with pytest.raises(SystemExit) as exit_:
        cli.precheck(["-m", "hydra/launcher=slurm", "variant=S,E"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: hydra/launcher=slurm: {cli.SLURM_EXTRA_HINT}"


def toy_miniature(path: Path, seeds=(0, 1)) -> Path:
    """sweeps/toy.yaml (its fixed part, env and run names) with one block: R (Top2/4) r2 over `seeds`."""
    import yaml

    toy = yaml.safe_load((sweep_grid.SWEEPS_DIR / "toy.yaml").read_text())
    toy["blocks"] = [{"variant": "R", "routing": ["n4k2"], "perft.bottleneck": [2], "seed": list(seeds)}]
    path.write_text(yaml.safe_dump(toy))
    return path


def shrink(micro_model_dir: Path) -> list[str]:
    """The overrides that shrink a job to seconds on CPU
    (trainer=debug: 8 steps; 2 questions per test set)."""
    return [
        "trainer=debug",
        "logger=none",
        f"model.pretrained={micro_model_dir}",
        "task.max_train_examples=32",
        "task.max_test_examples=2",
    ]


@pytest.mark.slow
def test_the_slurm_path_runs_a_toy_grid_through_submitit_local(micro_model_dir, app_env, tmp_path):
    """`run --launcher slurm --slurm-local`: hydra-submitit-launcher's plugin, job pickling and result
    collection, with local processes instead of sbatch; both jobs finish and `status` sees them (issue 14)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the [slurm] extra is not installed")
    grid = toy_miniature(tmp_path / "toy2.yaml")
    sweep = [sys.executable, str(REPO_ROOT / "scripts" / "sweep.py")]
    args = ["run", str(grid), "--launcher", "slurm", "--slurm-local", *shrink(micro_model_dir)]
    r = subprocess.run(
        [*sweep, *args], cwd=tmp_path, env=app_env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "hydra/launcher=slurm_local" in r.stdout and "toy2: 2 finished" in r.stdout
    runs = tmp_path / "outputs" / "runs" / "synthetic_commonsense" / "tiny_olmoe"
    assert list(runs.glob(".submitit/*/*_log.out"))  # the jobs went through submitit
    finished = sorted(p.parent.name for p in runs.glob("toy-*/results.json"))
    assert len(finished) == 2 and finished[0].startswith("toy-R-n4-k2-r2-s0-"), finished
    assert {json.loads((runs / n / "results.json").read_text())["seed"] for n in finished} == {0, 1}
    status = subprocess.run(
        [*sweep, "status", str(grid)], cwd=tmp_path, env=app_env, capture_output=True, text=True, timeout=300
    )
    assert status.stdout.splitlines()[-1] == "toy2: 2 finished", status.stdout + status.stderr


# The job lists Hydra's private BasicSweeper made (computed with it before it was replaced by grid.expand):
# every sweep file, plain and with an extra override, and multirun command lines of train.py.
EXPECTED_JOBS = json.loads((Path(__file__).parent / "fixtures" / "sweep_jobs.json").read_text())


@pytest.mark.parametrize("name", sorted(set(EXPECTED_JOBS) - {"_cli"}))
def test_grids_expand_to_the_jobs_hydras_basic_sweeper_made(name):
    sweep = sweep_grid.Sweep.load(name)
    assert sweep.jobs() == EXPECTED_JOBS[name]["plain"]
    assert sweep.jobs(["trainer=debug"]) == EXPECTED_JOBS[name]["extra"]
    assert len(sweep.jobs()) == sweep.size()


@pytest.mark.parametrize("line", sorted(EXPECTED_JOBS["_cli"]))
def test_multirun_command_lines_expand_as_hydra_does(line):
    """Lists, choice(), range() (floats too), sort(), a key given twice, `+key`/`~key`,
    numbers as Hydra prints them."""
    from perft_exp.cli import _job_overrides

    assert _job_overrides(line.split(), True) == EXPECTED_JOBS["_cli"][line]


def test_glob_lists_a_config_groups_options_and_an_interval_is_refused():
    assert sweep_grid.expand(["routing=glob(n8*)", "variant=R"]) == [
        [f"routing=n8k{k}", "variant=R"] for k in (1, 2, 4, 8)
    ]
    with pytest.raises(sweep_grid.SweepError, match="trainer.learning_rate: an interval_sweep"):
        sweep_grid.expand(["trainer.learning_rate=interval(0,1)"])


def test_no_private_hydra_module_is_imported():
    sources = [*(REPO_ROOT / "perft_exp").rglob("*.py"), *(REPO_ROOT / "scripts").glob("*.py")]
    assert not [p for p in sources if "hydra._internal" in p.read_text()]
