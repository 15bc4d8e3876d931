"""Distributed set-up: the process environment, and the DeepSpeed config the HF Trainer receives.

Single process without a launcher: the torch.distributed variables are filled in (rank 0 of 1,
localhost, a free port) so DeepSpeed runs for real, on CPU through gloo. Under `torchrun` or the
`deepspeed` launcher the variables are already there and are left alone.
"""

from __future__ import annotations

import os
import socket

from perft_exp.config import DeepSpeedConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_size() -> int:
    """The number of ranks this process started with ($WORLD_SIZE, 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, also before ensure_distributed_env() under a multi-task Slurm step (it holds the run
    directory)."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0")) == 0
    return int(os.environ.get("RANK", "0")) == 0


def ensure_distributed_env() -> None:
    """Fill in the variables torch.distributed needs for a single local process (no-op under a launcher)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        return
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if "SLURM_PROCID" in os.environ and ntasks > 1:
        # `srun` started one process per task (e.g. the submitit launcher with tasks_per_node=GPUs):
        # take ranks from Slurm. The rendezvous address must be shared by all tasks.
        if "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                f"Slurm started {ntasks} tasks but MASTER_ADDR is not set: export MASTER_ADDR "
                "(the first node, e.g. $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)) "
                "and MASTER_PORT in the job script"
            )
        os.environ.update(
            RANK=os.environ["SLURM_PROCID"],
            WORLD_SIZE=str(ntasks),
            LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"),
        )
        os.environ.setdefault("MASTER_PORT", "29500")
        return
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def deepspeed_config(ds: DeepSpeedConfig) -> dict | None:
    """The DeepSpeed JSON config; "auto" values are filled in by the HF Trainer from TrainingArguments."""
    if ds.stage == 0:
        return None
    zero: dict = {"stage": ds.stage, "overlap_comm": False, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if ds.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        # The torch AdamW the Trainer builds also runs with offloaded optimizer states (no cpu_adam build).
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
    }
