"""W&B: offline by default into the run directory, online when configured; never needs an account.

Run name is paper-style (`R (Top2/4) r16`), the group is the task/model (or the sweep's), and the run id
is derived from the run directory so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def init_wandb(cfg: DictConfig, label: str, output_dir: Path, extra_config: dict) -> bool:
    """Start (or resume) the run's W&B run, named `label` (PerftConfig.run_label); False when logging is off."""
    if cfg.logger.name != "wandb" or cfg.logger.mode == "disabled":
        os.environ["WANDB_DISABLED"] = "true"
        return False
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_MODE"] = cfg.logger.mode
    run_id = hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:16]
    config = OmegaConf.to_container(cfg, resolve=True)
    config.update(extra_config)
    wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=label,
        group=cfg.logger.group or f"{cfg.task.name}/{cfg.model.name}",
        tags=list(cfg.logger.tags),
        dir=str(output_dir),
        id=run_id,
        resume="allow",
        mode=cfg.logger.mode,
        config=config,
    )
    return True


def log_final(metrics: dict) -> None:
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update(metrics)
        wandb.finish()
