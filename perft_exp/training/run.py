"""`train(job) -> dict`: one fine-tuning run, from a composed config to its results in the run directory.

`job` is the composed config made ready by perft_exp/config.py's `prepare_run`: the typed run spec
(TrainConfig, every value checked before anything loads), which every stage below reads, and the composed
config itself, which only the run directory reads (its identity and saved config). `train` reads as the stages
it runs, each a function below:
  _prepare_run_dir  the run directory checked against the config (perft_exp/run_dir.py); a finished run
                    returns
  _resume_point     the newest complete checkpoint (RunDir.latest_checkpoint), refused early if it is another
                    variant's or base model's
  data              the task's records (perft_exp/data/task.py)
  _build_model      the frozen base model + adapters; the PerftConfig is resolved against it here, once
  _tokenize         train / validation sets
  _fit              the HF Trainer (+DeepSpeed, W&B, routing statistics), best adapter by validation loss
  _evaluate         the test sets (and the untuned base model's, cached below output_root:
                    perft_exp/evaluation/base_cache.py)
  _record           the results, derived from the run spec (_results), written last
Relaunching the same command resumes from the newest checkpoint, or returns the finished results.
variant=none runs _evaluate_base_only: the frozen model's evaluation, nothing trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import set_seed

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.counting import count_parameters
from perft_exp.adapters.io import check_compatible, read_adapter_config, save_adapter
from perft_exp.adapters.model import apply_adapters
from perft_exp.adapters.routing_stats import router_angles, track_routing
from perft_exp.adapters.variants import Routing
from perft_exp.config import ComposedRun, EvalConfig, TaskConfig, TrainConfig, TrainerConfig
from perft_exp.data.collate import CausalLMCollator, tokenize_dataset
from perft_exp.data.formats import canonical_test_set, contaminated_test_sets
from perft_exp.data.task import TaskData, load_task_data
from perft_exp.evaluation.base_cache import base_eval, base_eval_cache
from perft_exp.evaluation.configured import evaluate_with
from perft_exp.evaluation.metrics import metrics_table
from perft_exp.files import WriteError, writing
from perft_exp.models.arch import NotApplicable, architecture_for, find_moe_blocks
from perft_exp.models.loading import load_model, resolve_pretrained
from perft_exp.models.quantization import weight_bytes
from perft_exp.run_dir import RunDir
from perft_exp.training.batch import BatchPlan, batch_plan
from perft_exp.training.distributed import (
    deepspeed_config,
    ensure_distributed_env,
    is_main_process,
    world_size,
)
from perft_exp.training.tracking import init_wandb, log_final, run_config
from perft_exp.training.trainer import PerftTrainer, Preempted, PreemptionCallback

log = logging.getLogger(__name__)


# The trainer config keys that are TrainingArguments' own, passed under their names (config keys equal
# constructor arguments); base_aux_loss, nonfinite_loss and name are PerftTrainer's or the config's, and the
# micro batch and accumulation come from the batch plan (perft_exp/training/batch.py).
_PLANNED = ("per_device_train_batch_size", "gradient_accumulation_steps")
TRAINING_ARGUMENT_KEYS = tuple(
    f.name
    for f in dataclasses.fields(TrainerConfig)
    if f.name in {a.name for a in dataclasses.fields(TrainingArguments)} and f.name not in _PLANNED
)


def _training_arguments(
    spec: TrainConfig, run: RunDir, has_eval: bool, plan: BatchPlan | None = None
) -> TrainingArguments:
    plan = plan or batch_plan(spec.trainer, world_size())
    bf16 = (
        torch.cuda.is_available()
        and torch.cuda.is_bf16_supported()
        and spec.model.dtype in ("auto", "bfloat16")
    )
    return TrainingArguments(
        **{key: getattr(spec.trainer, key) for key in TRAINING_ARGUMENT_KEYS},
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation,
        eval_strategy="steps" if has_eval else "no",
        save_strategy="steps",
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        data_seed=spec.trainer.seed,
        bf16=bf16,
        remove_unused_columns=False,
        report_to=["wandb"] if spec.logger.name == "wandb" and spec.logger.mode != "disabled" else [],
        run_name=spec.name,
        deepspeed=deepspeed_config(spec.deepspeed),
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        torch_compile=spec.model.compile,
    )


def _distributed_info(trainer: PerftTrainer) -> dict:
    """What the live trainer runs on (not what the config asked for)."""
    if trainer.is_deepspeed_enabled:
        engine = trainer.model_wrapped
        return {
            "backend": "deepspeed",
            "zero_stage": int(engine.zero_optimization_stage()),
            "world_size": int(engine.world_size),
        }
    return {"backend": "none", "zero_stage": 0, "world_size": trainer.args.world_size}


def _in_task_order(results: dict, test_sets) -> dict:
    """The written results keep their keys sorted; list the test sets in the task's order again for the
    table."""
    order = {canonical_test_set(name): i for i, name in enumerate(test_sets)}
    out = dict(results)
    for key in ("eval", "base_eval"):
        if isinstance(results.get(key), dict):
            out[key] = dict(sorted(results[key].items(), key=lambda kv: order.get(kv[0], len(order))))
    return out


def print_table(results: dict) -> None:
    """Base and tuned accuracy per test set beside the majority label, chance, skill and top prediction."""
    print(f"\n{results['variant_name']} on {results['model']} / {results['task']}:")
    label = "frozen" if results.get("variant") == "none" else "tuned"
    print(metrics_table(results.get("eval") or {}, results.get("base_eval"), label))
    print(
        f"(%; skill = {label} - majority, the best constant answer; top prediction: the {label} model's most "
        "common answer and its share)"
    )
    print(f"results: {RunDir(results['output_dir']).results}\n")


def run_mean_loss(log_history: list[dict]) -> float | None:
    """The training loss averaged over every step of the run, from the logged losses (each the mean over its
    logging interval). trainer_state.json keeps them across a resume, while the HF Trainer's own
    `training_loss` averages only the steps trained since the last resume."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] > last:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else None


# --- the stages of a run ---------------------------------------------------------------------------


def _prepare_run_dir(job: ComposedRun) -> tuple[RunDir, dict | None]:
    """The run directory, checked against the config; the finished run's results when there is nothing to
    do."""
    spec = job.spec
    run = RunDir(spec.output_dir)
    run.check(job.config, record=is_main_process())
    if spec.resume and run.state() == "finished":
        log.info("%s exists: the run is finished, nothing to train; its results:", run.results)
        results = run.read_results()
        if is_main_process() and results.get("eval"):
            print_table(_in_task_order(results, spec.task.test_sets))
        return run, results
    run.path.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        run.clear_failure()  # a new attempt; a new failure record is written if it fails again
    return run, None


def _resume_point(spec: TrainConfig, perft: PerftConfig, run: RunDir) -> str | None:
    """The checkpoint to resume from, refused before anything loads if it is another variant's or base
    model's."""
    checkpoint = run.latest_checkpoint() if spec.resume else None
    if checkpoint:
        check_compatible(
            read_adapter_config(checkpoint),
            None,
            perft,
            where=checkpoint,
            base_model=resolve_pretrained(spec.model),
        )
        log.info("resuming from %s", checkpoint)
    return checkpoint


def _build_model(spec: TrainConfig, perft: PerftConfig, checkpoint: str | None):
    """The frozen base model with the adapters attached; returns (model, tokenizer, the resolved
    PerftConfig)."""
    model, tokenizer = load_model(spec.model)
    set_seed(spec.trainer.seed)  # adapter init must not depend on whether loading just built a tiny model
    if checkpoint:
        check_compatible(read_adapter_config(checkpoint), model.config, perft, where=checkpoint)
    model = apply_adapters(model, perft)
    if spec.deepspeed.stage == 3:
        from deepspeed.utils import set_z3_leaf_modules

        # The fused experts run a data-dependent subset of their weights: ZeRO-3 gathers them whole (a
        # leaf). The rest of the block (its router, and the PERFT module that hooks add beside it) keeps
        # ZeRO-3's own per-module gathering: PERFT's parameters live under the block but are not called by
        # its forward.
        arch = architecture_for(model)
        experts = {type(arch.experts(block)) for _, block in find_moe_blocks(model, arch)}
        set_z3_leaf_modules(model, list(experts))
    return (
        model,
        tokenizer,
        model.perft_config,
    )  # resolved against the model: E's N and K, the aux coefficient


def _tokenize(task: TaskConfig, tokenizer, data: TaskData) -> tuple[list, list, int]:
    """(train set, validation set, how many training examples were truncated at task.cutoff_len)."""
    tokenize = functools.partial(
        tokenize_dataset,
        tokenizer,
        cutoff_len=task.cutoff_len,
        train_on_inputs=task.train_on_inputs,
        prompt=task.prompt,
    )
    train_set, n_truncated = tokenize(data.train)
    val_set, _ = tokenize(data.val)
    if is_main_process():
        log.info(
            "train %d examples (%d truncated at %d tokens), val %d",
            len(train_set),
            n_truncated,
            task.cutoff_len,
            len(val_set),
        )
    return train_set, val_set, n_truncated


def _fit(
    spec: TrainConfig,
    run: RunDir,
    perft: PerftConfig,
    model,
    tokenizer,
    train_set,
    val_set,
    checkpoint: str | None,
    plan: BatchPlan,
):
    """The HF Trainer's run, stopped cleanly by SIGTERM/SIGINT; returns (trainer, its TrainOutput)."""
    preemption = PreemptionCallback()
    trainer = PerftTrainer(
        model=model,
        args=_training_arguments(spec, run, has_eval=len(val_set) > 0, plan=plan),
        train_dataset=train_set,
        eval_dataset=val_set or None,
        data_collator=CausalLMCollator(tokenizer),
        processing_class=tokenizer,
        callbacks=[preemption],
        adapter_aux_coef=perft.aux_loss_coef,
        base_aux_loss=spec.trainer.base_aux_loss,
        nonfinite_loss=spec.trainer.nonfinite_loss,
        base_model_name=resolve_pretrained(spec.model),  # a path that loads: AutoPeftModelForCausalLM
        logits_at_labels=spec.trainer.logits_at_labels,
    )
    assert trainer.args.world_size == plan.world_size, (
        trainer.args.world_size,
        plan,
    )  # the ranks planned for
    preemption.install()
    try:
        with writing(run.checkpoints):
            train_output = trainer.train(resume_from_checkpoint=checkpoint)
    except WriteError as e:
        torn = run.remove_torn_checkpoints() if is_main_process() else []
        if torn and e.filename == str(run.checkpoints):  # no file named by the writer: name the checkpoint
            e.filename = str(torn[-1])
        raise
    finally:
        preemption.uninstall()
    if preemption.signal is not None:
        raise Preempted(
            f"stopped by signal {preemption.signal} at step {trainer.state.global_step}; "
            "the same command resumes from the checkpoint"
        )
    return trainer, train_output


def _evaluate(
    ev: EvalConfig, model, tokenizer, tests: dict, out_dir: Path | None, sharded: bool = False
) -> dict:
    main = is_main_process()
    with writing(out_dir or Path(".")):
        return evaluate_with(
            ev, model, tokenizer, tests, out_dir=out_dir if main else None, progress=main, synced_gpus=sharded
        )


def _results(
    job: ComposedRun,
    perft: PerftConfig,
    run: RunDir,
    params: dict,
    train_file: str | None,
    contaminated: list[str],
    train: dict | None,
) -> dict:
    """What a run's results record besides its evaluations, all derived from the run spec."""
    spec = job.spec
    return {
        "variant": perft.variant,
        "variant_name": perft.run_label(),
        "perft": perft.to_dict(),
        "model": spec.model.name,
        "task": spec.task.name,
        "seed": spec.trainer.seed,
        "train_file": train_file,
        "contaminated_test_sets": contaminated,
        "params": params,
        "config_changes": job.changes,
        "train": train,
        "output_dir": str(run.path),
    }


def _record(job: ComposedRun, run: RunDir, results: dict, t0: float) -> None:
    results["runtime_s"] = time.perf_counter() - t0
    run.write_results(results, job.config)  # the composed config: saved beside the results (config.yaml)


def _evaluate_base_only(job: ComposedRun, perft: PerftConfig, run: RunDir, t0: float) -> dict:
    """variant=none: the frozen base model's evaluation, nothing trained (no training file needed)."""
    spec = job.spec
    tests = load_task_data(spec.task, train=False).tests
    model, tokenizer = load_model(spec.model, device="cuda" if torch.cuda.is_available() else None)
    model = apply_adapters(model, perft)
    model.eval()
    params = count_parameters(model).to_dict()
    results = _results(job, model.perft_config, run, params, None, [], None)
    if is_main_process():
        results["eval"] = _evaluate(spec.eval, model, tokenizer, tests, run.records)
        _record(job, run, results, t0)
        print_table(results)
    return results


def train(job: ComposedRun) -> dict:
    """One run: prepare the run directory -> data -> model -> train -> evaluate -> record (see the docstring).

    The main process holds the run directory throughout (perft_exp/run_lock.py): RunDirHeld, before anything
    loads, when another process is running it."""
    with RunDir(job.spec.output_dir).hold() if is_main_process() else contextlib.nullcontext():
        return _train(job)


def _train(job: ComposedRun) -> dict:
    spec = job.spec
    perft = spec.perft  # the typed run spec's PerftConfig (resolved in _build_model)
    run, finished = _prepare_run_dir(job)
    if finished is not None:
        return finished
    t0 = time.perf_counter()
    if spec.trainer.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(spec.trainer.cpu_threads)  # fixes the order of float sums (docs/miniature.md)
    if perft.variant == "none":
        return _evaluate_base_only(job, perft, run, t0)
    ensure_distributed_env() if spec.deepspeed.stage else None
    set_seed(spec.trainer.seed)
    checkpoint = _resume_point(spec, perft, run)

    data = load_task_data(spec.task)
    model, tokenizer, perft = _build_model(spec, perft, checkpoint)
    params = {**count_parameters(model).to_dict(), "base_weight_bytes": weight_bytes(model, frozen_only=True)}
    train_set, val_set, n_truncated = _tokenize(spec.task, tokenizer, data)
    plan = batch_plan(spec.trainer, world_size())
    flat = run_config(spec, perft, params, plan)
    tracking = is_main_process() and init_wandb(spec, perft, run.path, job.resolved, flat)

    trainer, train_output = _fit(spec, run, perft, model, tokenizer, train_set, val_set, checkpoint, plan)
    distributed = _distributed_info(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    train = {
        "steps": trainer.state.global_step,
        "final_loss": run_mean_loss(trainer.state.log_history),
        "best_eval_loss": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "skipped_steps": trainer.skipped_steps,
        "truncated_examples": n_truncated,
        "empty_answers": data.empty_answers,  # train: kept; a test set: left out (perft_exp.data.formats)
        "runtime_s": train_output.metrics.get("train_runtime"),
    }
    contaminated = contaminated_test_sets(spec.task.train_file, list(data.tests))
    results = _results(job, perft, run, params, spec.task.train_file, contaminated, train)
    results["distributed"] = distributed
    results["batch"] = (
        plan.to_dict()
    )  # global = micro x accumulation x world size (perft_exp/training/batch.py)
    with trainer._gathered():  # under ZeRO-3 every rank takes part in gathering the adapter tensors
        if is_main_process():
            with writing(run.adapter):
                save_adapter(model, run.adapter, resolve_pretrained(spec.model))

    # Under ZeRO-3 with several ranks the frozen weights are sharded: each forward needs every rank, so all
    # ranks run the same evaluation in lockstep and rank 0 keeps the result. Otherwise rank 0 evaluates alone.
    sharded = distributed["zero_stage"] == 3 and distributed["world_size"] > 1
    if spec.eval.enabled and data.tests and (is_main_process() or sharded):
        model.eval()
        # The routing the test sets got (R, E): PEFT experts per token measured, beside counting's bound
        # K / N.
        with track_routing(model.get_base_model()) as routing:
            results["eval"] = _evaluate(spec.eval, model, tokenizer, data.tests, run.records, sharded)
        if routing.layers:
            results["routing"] = routing.summary()
        if spec.eval.base:
            weights = getattr(model, "name_or_path", "")
            cache = base_eval_cache(spec.output_root, spec.model, spec.task, spec.eval, weights, data.tests)
            results["base_eval"] = base_eval(
                model, tokenizer, data.tests, spec.eval, cache, main=is_main_process(), sharded=sharded
            )
            results["base_eval_records"] = str(cache.with_suffix(""))

    if is_main_process():
        _record(job, run, results, t0)
        if tracking:  # R's router angles need the whole router: not under ZeRO-3's sharding
            own_router = perft.spec.routing is Routing.OWN
            try:
                angles = router_angles(model) if own_router and distributed["zero_stage"] != 3 else []
            except NotApplicable as e:  # a family whose router has no (E, D) matrix
                log.info("router angles: %s", e)
                angles = []
            log_final(results, run.records, spec.logger.table_rows_per_set, angles)
        print_table(results)
    return results
