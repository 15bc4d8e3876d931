"""The batch of one optimizer step: global batch = micro batch x gradient accumulation x world size.

With `trainer.global_batch_size` set (16 in trainer=olmoe|mixtral, the authors' one process with no
accumulation) the global batch is fixed and the rest is derived from the number of ranks:
    per rank      = global_batch_size / world_size                     (must divide)
    micro batch   = trainer.per_device_train_batch_size, or per rank when null (no accumulation)
    accumulation  = per rank / micro batch                             (must divide)
so the optimizer steps, and with them warmup and the eval/save points (counted in optimizer steps), are the
same on 1, 2 or 8 ranks. Without it (trainer=tiny, debug) the global batch is what the per-device batch and
`trainer.gradient_accumulation_steps` make on the ranks there are. The run's results keep the plan under
`batch`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from perft_exp.checks import ConfigError


class BatchKnobs(Protocol):
    """The trainer group's batch keys (perft_exp/config.py's TrainerConfig: it validates them here)."""

    global_batch_size: int | None
    per_device_train_batch_size: int | None
    gradient_accumulation_steps: int


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch splits: micro batch x accumulation x ranks."""

    global_batch: int
    micro_batch: int  # per rank and forward pass (HF per_device_train_batch_size)
    accumulation: int  # micro batches per optimizer step on each rank
    world_size: int

    def to_dict(self) -> dict:
        """The plan as plain values (the run's results record it)."""
        return asdict(self)


def batch_plan(trainer: BatchKnobs, world_size: int) -> BatchPlan:
    """The plan for `world_size` ranks; a config the ranks cannot split raises ConfigError naming the key."""
    micro, accumulation, total = (
        trainer.per_device_train_batch_size,
        trainer.gradient_accumulation_steps,
        trainer.global_batch_size,
    )
    if total is None:
        if micro is None or micro < 1:
            raise ConfigError(
                f"trainer.per_device_train_batch_size={micro!r} must be > 0 (or set global_batch_size)"
            )
        if accumulation < 1:
            raise ConfigError(f"trainer.gradient_accumulation_steps={accumulation!r} must be > 0")
        return BatchPlan(micro * accumulation * world_size, micro, accumulation, world_size)
    if total < 1:
        raise ConfigError(f"trainer.global_batch_size={total!r} must be > 0")
    if accumulation != 1:
        raise ConfigError(
            f"trainer.gradient_accumulation_steps={accumulation} with trainer.global_batch_size={total}: "
            "accumulation is derived from the global batch; set trainer.per_device_train_batch_size instead"
        )
    if total % world_size:
        raise ConfigError(
            f"trainer.global_batch_size={total} cannot be split over {world_size} ranks; "
            f"use a world size that divides it"
        )
    per_rank = total // world_size
    micro = per_rank if micro is None else micro
    if micro < 1 or per_rank % micro:
        raise ConfigError(
            f"trainer.per_device_train_batch_size={micro} must divide the per-rank batch {per_rank} "
            f"(trainer.global_batch_size={total} over {world_size} ranks)"
        )
    return BatchPlan(total, micro, per_rank // micro, world_size)
