"""The experiment app: every config option composes and instantiates; DeepSpeed ZeRO-2/3 run for real
on CPU, single process and under torchrun; the launcher's --local_rank does not break Hydra."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, run_train
from moe_models import tiny_moe
from safetensors.torch import load_file

from perft_exp.adapters.model import apply_adapters
from perft_exp.cli import _strip_launcher_args
from perft_exp.config import CONF_DIR, compose, perft_config, validate
from perft_exp.data.task import load_task_data
from perft_exp.models.loading import build_meta_model
from perft_exp.run_dir import RunDir
from perft_exp.training.distributed import deepspeed_config
from perft_exp.training.run import _training_arguments


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture
def llm_adapters_dir(tmp_path):
    """A miniature of the LLM-Adapters layout with every real file name, a few records each."""
    rec = {"instruction": "q", "input": "", "output": "the correct answer is true", "answer": "true"}
    for name in ("commonsense_170k", "math_50k"):
        (tmp_path / f"{name}.json").write_text(json.dumps([rec] * 130))
    for name in (
        "boolq",
        "piqa",
        "social_i_qa",
        "hellaswag",
        "winogrande",
        "ARC-Easy",
        "ARC-Challenge",
        "openbookqa",
        "AddSub",
        "MultiArith",
        "SingleEq",
        "gsm8k",
        "AQuA",
        "SVAMP",
    ):
        (tmp_path / "dataset" / name).mkdir(parents=True)
        (tmp_path / "dataset" / name / "test.json").write_text(json.dumps([rec] * 3))
    return tmp_path


@pytest.mark.parametrize("model", options("model"))
def test_model_options(model):
    cfg = compose([f"model={model}"])
    spec = validate(cfg)
    if cfg.model.architecture:  # full size: built offline on meta, no download
        built = build_meta_model(spec.model)
        assert built.config.model_type == cfg.model.model_type
        assert all(p.device.type == "meta" for p in built.parameters())
    else:
        from perft_exp.models.tiny_spec import TINY_SPECS

        assert cfg.model.pretrained.startswith("tiny:") and cfg.model.pretrained[5:] in TINY_SPECS


@pytest.mark.parametrize("variant", options("variant"))
def test_variant_options(variant):
    cfg = compose([f"variant={variant}", "perft.bottleneck=4"])
    perft = perft_config(cfg)
    model = apply_adapters(tiny_moe("olmoe"), perft)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (n_trainable == 0) == (variant == "none")


@pytest.mark.parametrize("task", options("task"))
def test_task_options(task, llm_adapters_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PERFT_CACHE", str(tmp_path / "cache"))
    cfg = compose([f"task={task}"] + ([] if "synthetic" in task else [f"task.data_dir={llm_adapters_dir}"]))
    data = load_task_data(validate(cfg).task)
    assert data.train and len(data.val) == cfg.task.val_size
    assert sorted(data.tests) == sorted(cfg.task.test_sets)


@pytest.mark.parametrize("trainer", options("trainer"))
def test_trainer_options(trainer, tmp_path):
    cfg = compose([f"trainer={trainer}"])
    args = _training_arguments(validate(cfg), RunDir(tmp_path), has_eval=True)
    assert args.learning_rate == cfg.trainer.learning_rate
    assert args.eval_steps == cfg.trainer.eval_steps and args.metric_for_best_model == "eval_loss"
    assert args.optim == "adamw_torch"  # what every documented number used


def test_the_optimizer_is_the_trainer_groups_to_choose(tmp_path):
    cfg = compose(["trainer.optim=adamw_torch_fused"])
    assert _training_arguments(validate(cfg), RunDir(tmp_path), has_eval=True).optim == "adamw_torch_fused"


@pytest.mark.parametrize("ds", options("deepspeed"))
def test_deepspeed_options(ds):
    cfg = compose([f"deepspeed={ds}"])
    ds_config = deepspeed_config(validate(cfg).deepspeed)
    assert (ds_config is None) == (cfg.deepspeed.stage == 0)
    if ds_config:
        assert ds_config["zero_optimization"]["stage"] == cfg.deepspeed.stage


@pytest.mark.parametrize("group", ["logger", "eval"])
def test_other_groups(group):
    for option in options(group):
        validate(compose([f"{group}={option}"]))


def test_paper_trainer_settings():
    t = compose(["trainer=olmoe"]).trainer
    assert (t.learning_rate, t.global_batch_size, t.warmup_steps, t.num_train_epochs) == (1e-5, 16, 100, 3)
    assert (t.eval_steps, t.save_steps, t.save_total_limit, t.max_grad_norm) == (80, 80, 3, 1.0)
    assert compose(["trainer=mixtral"]).trainer.learning_rate == 2e-5


def test_local_rank_argument_goes_to_the_environment(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert _strip_launcher_args(["--local_rank=3", "variant=S"]) == ["variant=S"]
    assert os.environ["LOCAL_RANK"] == "3"
    assert _strip_launcher_args(["--local-rank", "1", "variant=S"]) == ["variant=S"]


def _ds_args(model_dir, run_dir, stage: str) -> list[str]:
    return [
        f"deepspeed={stage}",
        "trainer=debug",
        "logger=none",
        "eval.enabled=false",
        f"model.pretrained={model_dir}",
        "task.max_train_examples=64",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.fixture(scope="module")
def ds_env(app_env):
    # DeepSpeed JIT-compiles a communication op on first use; keep it between runs.
    return {**app_env, "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_single_process(stage, micro_model_dir, ds_env, tmp_path):
    r = run_train(_ds_args(micro_model_dir, tmp_path, stage), ds_env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    dist = json.loads((tmp_path / "results.json").read_text())["distributed"]
    assert dist == {"backend": "deepspeed", "zero_stage": int(stage[-1]), "world_size": 1}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero2-4bit"])
def test_deepspeed_torchrun_two_processes(stage, micro_model_dir, ds_env, tmp_path):
    """Two ranks on CPU (gloo); ZeRO-2 also over the 4-bit base (each rank holds it whole: ZeRO-2 shards
    optimizer state and gradients, which are the adapters' alone)."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    stage, _, quant = stage.partition("-")
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + int(stage[-1]) + 10 * bool(quant)),
        str(REPO / "train.py"),
        *_ds_args(micro_model_dir, tmp_path, stage),
        *([f"model.quantization={quant}"] if quant else []),
    ]
    if stage == "zero3":  # sharded weights: evaluation and the final adapter save need both ranks
        cmd = [a for a in cmd if a != "eval.enabled=false"] + ["task.max_test_examples=3"]
    r = subprocess.run(cmd, cwd=REPO, env=ds_env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["distributed"] == {"backend": "deepspeed", "zero_stage": int(stage[-1]), "world_size": 2}
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == results["params"]["trainable"]  # gathered, not shards
    if stage == "zero3":
        assert 0.0 <= results["eval"]["average"] <= 1.0 and "base_eval" in results
        assert len((tmp_path / "eval" / "boolq.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_finished_run_prints_its_table_again(micro_model_dir, app_env, tmp_path):
    """Relaunching a finished run trains nothing and prints the finished run's result table."""
    args = [
        "trainer=debug",
        "logger=none",
        f"model.pretrained={micro_model_dir}",
        "task.max_train_examples=32",
        "task.max_test_examples=2",
        f"hydra.run.dir={tmp_path}",
    ]
    first = run_train(args, app_env)
    assert first.returncode == 0, first.stderr[-3000:]
    stamp = (tmp_path / "results.json").stat().st_mtime_ns
    again = run_train(args, app_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "results.json").stat().st_mtime_ns == stamp

    def table(out: str) -> str:
        return out[out.index("test set") : out.index("(%; skill")]

    assert "skill" in table(first.stdout) and table(again.stdout) == table(first.stdout), (
        first.stdout,
        again.stdout,
    )


def _small(model_dir, run_dir) -> list[str]:
    return [
        "trainer=debug",
        "logger=none",
        f"model.pretrained={model_dir}",
        "task.max_train_examples=32",
        "task.max_test_examples=2",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_variant_none_evaluates_the_base_model_without_training(micro_model_dir, app_env, tmp_path):
    """`variant=none` trains nothing (there is nothing to train) and needs no training file (item 1)."""
    r = run_train(
        [*_small(micro_model_dir, tmp_path), "variant=none", "task.train_file=no_such_file"], app_env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["variant_name"] == "base model" and results["train"] is None
    assert results["params"]["trainable"] == 0 and not (tmp_path / "checkpoints").exists()
    assert set(results["eval"]) >= {"boolq", "average"} and results["eval"]["boolq"]["n"] == 2
    assert "base model on tiny_olmoe" in r.stdout


@pytest.mark.slow
def test_a_top_p_run_records_the_experts_per_token_it_used(micro_model_dir, app_env, tmp_path):
    """results.json holds the activated fraction measured on the test sets beside counting's bound K / N."""
    r = run_train([*_small(micro_model_dir, tmp_path), "perft.top_p=0.5", "perft.top_k=3"], app_env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["perft"]["top_p"] == 0.5 and "[top-p=0.5" in results["variant_name"]
    routing = results["routing"]
    assert 1.0 <= routing["experts_per_token"] <= 3.0
    assert routing["activated_fraction"] == pytest.approx(routing["experts_per_token"] / 4)
    assert routing["layers"] and all(row["tokens"] > 0 for row in routing["layers"])


@pytest.mark.slow
def test_perft_trains_on_a_4bit_model(micro_model_dir, app_env, tmp_path):
    """bitsandbytes 4-bit base, PERFT-R experts in full precision beside it: the HF Trainer accepts
    it (item 3)."""
    pytest.importorskip("bitsandbytes")
    r = run_train(
        [*_small(micro_model_dir, tmp_path), "model.quantization=4bit", "eval.enabled=false"], app_env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train"]["steps"] == 8 and results["variant_name"] == "R (Top2/4) [adapter] r16"
    assert "model.quantization=4bit" in results["config_changes"]
    # the loaded 4-bit base's bytes (its fp32 embeddings, norms and routers included), and the record of
    # how the base was quantised in each file that describes the run
    assert 0 < results["params"]["base_weight_bytes"] < 0.45 * 4 * results["params"]["base_total"]
    run_config = json.loads((tmp_path / "run_config.json").read_text())
    assert run_config["model"]["quantization"] == "4bit" and run_config["model"]["quant_type"] == "nf4"
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_quantization"]["bits"] == 4


def test_run_names_separate_what_the_command_line_changes():
    """Same command, same directory; another trainer, ZeRO stage or learning rate, another directory."""
    from perft_exp.config import compose

    def name(*overrides: str) -> str:
        return compose(list(overrides)).name

    assert name() == name("variant=R", "perft.num_experts=4") == name("logger=none") == "R-n4-k2-r16-adapter"
    assert name("variant=E", "perft.bottleneck=8") == "E-r8-adapter"
    others = {
        name("deepspeed=zero2", "trainer=debug"),
        name("deepspeed=zero3", "trainer=debug"),
        name("trainer.learning_rate=1e-3"),
        name("perft.dropout=0.1"),
    }
    assert len(others) == 4 and all(n.startswith("R-n4-k2-r16-adapter-") for n in others)
    assert name("trainer=debug", "deepspeed=zero2") == name("deepspeed=zero2", "trainer=debug")
    assert name("name=mine") == "mine"


def test_the_tiny_models_set_the_adapter_form_for_perft_only():
    """The embedded default's PEFT experts take the adapter form on the tiny OLMoE models (and their control),
    the paper's LoRA form elsewhere; the run name shows it, and the LoRA baselines neither run nor name it."""

    def perft(*overrides: str):
        cfg = compose(list(overrides))
        return cfg.name, perft_config(cfg)

    assert perft() == perft("model=tiny_olmoe_random")
    name, cfg = perft()
    assert name == "R-n4-k2-r16-adapter" and cfg.form == "adapter" and cfg.scaling == 1.0
    assert cfg.run_label() == "R (Top2/4) [adapter] r16"
    for model in ("tiny_mixtral", "olmoe_1b_7b", "mixtral_8x7b"):
        name, cfg = perft(f"model={model}")
        assert name == "R-n4-k2-r16" and cfg.form == "lora"
    # The paper's form on the tiny model is the run that had the name before: no hash of a difference.
    assert perft("perft.form=lora")[0] == "R-n4-k2-r16"
    for form in ([], ["perft.form=adapter"], ["perft.form=lora"]):
        name, cfg = perft("variant=qv_lora", *form)
        assert name == "qv_lora-r16" and cfg.form == "lora" and cfg.run_label() == "qv-LoRA r16"


def test_a_baselines_run_directory_takes_it_with_any_form(tmp_path):
    """`variant=qv_lora` on the tiny model (form adapter composed, not run) and with `perft.form=lora` (the
    toy sweep's) are one run: the directory's config check agrees; for PERFT the form is another run."""
    from perft_exp.run_dir import RunDirConflict, run_identity

    plain, lora = compose(["variant=qv_lora"]), compose(["variant=qv_lora", "perft.form=lora"])
    assert plain.perft.form == "adapter" and run_identity(plain) == run_identity(lora)
    assert run_identity(plain)["perft"]["form"] == "lora"  # what run_config.json records
    # The frozen model takes no PEFT-expert key either.
    frozen = compose(["variant=none"])
    assert run_identity(frozen) == run_identity(compose(["variant=none", "perft.form=lora"]))
    run = RunDir(tmp_path / "qv")
    run.check(lora)
    run.check(plain)  # no conflict
    perft = RunDir(tmp_path / "R")
    perft.check(compose(["name=R"]))
    with pytest.raises(RunDirConflict, match="perft.form"):
        perft.check(compose(["name=R", "perft.form=lora"]))


def test_run_names_hash_the_resolved_config_not_the_command_line():
    """Naming a default value changes nothing; two spellings of one value are one run (issue 14, item 7)."""

    def name(*overrides: str) -> str:
        return compose(list(overrides)).name

    default = "R-n4-k2-r16-adapter"
    assert name("eval.mode=greedy") == name("trainer=tiny", "deepspeed=none", "eval=greedy") == default
    assert name("task=synthetic_math", "eval.mode=greedy") == name("task=synthetic_math") == default
    assert name("trainer.learning_rate=1e-3") == name("trainer.learning_rate=0.001") != default
    # 0.05 is the default dropout
    assert name("variant=E", "perft.bottleneck=8", "perft.dropout=0.05") == "E-r8-adapter"


def test_what_a_run_changed_is_described_by_group():
    from perft_exp.config import changed_from_defaults, describe_changes

    assert describe_changes(changed_from_defaults(compose(["eval.mode=greedy", "logger=none"]))) == []
    changes = describe_changes(changed_from_defaults(compose(["trainer=debug", "task.max_test_examples=2"])))
    assert changes == ["trainer=debug", "task.max_test_examples=2"]


def test_variant_none_needs_test_sets():
    from perft_exp.config import ConfigError

    with pytest.raises(ConfigError, match="variant=none"):
        validate(compose(["variant=none", "eval.enabled=false"]))


def test_a_model_path_that_does_not_exist_is_one_config_error(tmp_path):
    from perft_exp.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.pretrained='/no/such/model' is not a directory"):
        validate(compose(["model.pretrained=/no/such/model"]))
    validate(compose([f"model.pretrained={tmp_path}"]))  # an existing directory passes
    validate(compose(["model=olmoe_1b_7b"]))  # a hub id (org/name) is not a path


def test_labels_agree_between_console_count_params_and_tables():
    """One label owner: `E (Top8/64) r8` everywhere, never `E r8`; `qv-LoRA`, never `qv_lora` (item 8)."""
    import runpy

    from perft_exp.analysis.results.runs import config_label

    count = runpy.run_path(str(REPO / "scripts" / "count_params.py"))["count"]
    assert count(["model=olmoe_1b_7b", "variant=E", "perft.bottleneck=8"])["config"] == "E (Top8/64) r8"
    assert count(["model=olmoe_1b_7b", "variant=qv_lora", "perft.bottleneck=16"])["config"] == "qv-LoRA r16"
    assert config_label({"variant": "E", "bottleneck": 8}, 8, 64) == "E (Top8/64)"
    assert perft_config(compose(["variant=qv_lora"])).run_label() == "qv-LoRA r16"
    assert perft_config(compose(["variant=none"])).run_label() == "base model"


def test_seed_sets_adapter_init_and_data_order_and_shows_in_the_run_name(tmp_path, monkeypatch):
    """`seed=` drives trainer.seed (adapter init, data order); each seed has its own, readable directory."""
    from perft_exp.config import DEFAULT_SEED, compose, to_spec
    from perft_exp.training import run

    monkeypatch.setattr(
        run, "TrainingArguments", dict
    )  # the arguments, without initialising torch.distributed

    default, one = compose([]), compose(["seed=1"])
    assert default.seed == default.trainer.seed == DEFAULT_SEED and default.name == "R-n4-k2-r16-adapter"
    assert one.trainer.seed == 1 and one.name == "R-n4-k2-r16-adapter-s1"
    assert compose([f"seed={DEFAULT_SEED}"]).name == "R-n4-k2-r16-adapter"
    assert compose(["seed=2", "trainer=debug"]).trainer.seed == 2  # another trainer preset follows it too
    assert compose(["seed=1", "trainer=debug"]).name.startswith("R-n4-k2-r16-adapter-s1-")
    assert compose(["variant=E", "perft.bottleneck=8", "seed=0"]).name == "E-r8-adapter-s0"
    explicit = compose(["trainer.seed=5"])  # still accepted; enters the override hash
    assert (
        explicit.trainer.seed == 5
        and explicit.name.startswith("R-n4-k2-r16-adapter-")
        and explicit.name != one.name
    )
    args = run._training_arguments(to_spec(one), RunDir(tmp_path), has_eval=True)
    assert args["seed"] == args["data_seed"] == 1
