"""The typed run spec (perft_exp/config.py): `validate` builds the composed config as its schema dataclasses,
each checking its own values, closed choices as enum members; the trainer keys TrainingArguments shares pass
by name."""

from __future__ import annotations

import pytest

from perft_exp.adapters.config import PerftConfig
from perft_exp.config import (
    ConfigError,
    Dtype,
    EvalMode,
    LoggerMode,
    NonfiniteLoss,
    TaskKind,
    TrainConfig,
    TrainerConfig,
    compose,
    validate,
)


def test_validate_returns_the_typed_spec_with_enum_members():
    spec = validate(compose(["eval=paper", "trainer.nonfinite_loss=skip"]))
    assert isinstance(spec, TrainConfig) and isinstance(spec.perft, PerftConfig)
    assert spec.eval.mode is EvalMode.PAPER and spec.trainer.nonfinite_loss is NonfiniteLoss.SKIP
    assert isinstance(spec.model.dtype, Dtype) and spec.task.kind is TaskKind.COMMONSENSE
    assert spec.logger.mode is LoggerMode.OFFLINE and spec.eval.mode == "paper"  # members are their strings


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.dtype=fp8",
            "model.dtype='fp8' is not allowed; choose one of auto, float32, bfloat16, float16",
        ),
        ("model.quantization=2bit", "model.quantization='2bit' is not allowed"),
        ("eval.mode=beam", "eval.mode='beam' is not allowed; choose one of greedy, paper, score"),
        ("logger.mode=cloud", "logger.mode='cloud' is not allowed"),
        ("trainer.nonfinite_loss=ignore", "trainer.nonfinite_loss='ignore' is not allowed"),
        ("task.kind=trivia", "task.kind='trivia' is not allowed"),
        ("eval.batch_size=0", "eval.batch_size=0 must be > 0"),
        ("trainer.save_steps=7", "trainer.save_steps=7 must be a multiple of trainer.eval_steps"),
        ("perft.form=dora", "perft.form='dora' is not allowed; choose one of lora, adapter"),
    ],
)
def test_each_group_checks_its_own_values_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(compose([override]))


def test_training_arguments_take_the_trainer_keys_they_share_by_name():
    from perft_exp.training.run import TRAINING_ARGUMENT_KEYS

    shared = set(TRAINING_ARGUMENT_KEYS)
    assert {
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "warmup_steps",
        "eval_steps",
        "save_steps",
        "seed",
        "per_device_eval_batch_size",
    } <= shared
    # Not TrainingArguments' own (name, base_aux_loss, nonfinite_loss, global_batch_size, logits_at_labels,
    # cpu_threads), or set from the batch plan (the micro batch and the accumulation, training/batch.py).
    not_passed = {
        "name",
        "base_aux_loss",
        "nonfinite_loss",
        "global_batch_size",
        "logits_at_labels",
        "cpu_threads",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
    }
    assert shared.isdisjoint(not_passed)
    assert len(shared) == len(TrainerConfig.__dataclass_fields__) - len(not_passed)


def test_a_cause_the_message_already_quotes_is_said_once():
    """`task.test_sets=[boolq,piqa2]`: the ConfigError quotes its cause's text; the line says it once."""
    from perft_exp.cli import one_line

    with pytest.raises(Exception) as caught:
        validate(compose(["task.test_sets=[boolq,piqa2]"]))
    line = one_line(caught.value)
    assert line.startswith("task.test_sets: unknown test set 'piqa2'")
    assert line.count("unknown test set 'piqa2'") == 1
