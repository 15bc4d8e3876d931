"""W&B: offline by default into the run directory, online when configured; never needs an account.

Run name is paper-style (`R (Top2/4) r16`), the group is the task/model (or the sweep's), and the run id
is derived from the run directory so a resumed run continues the same W&B run. Every key written here
is named in perft_exp/metric_schema.py, which the dashboards (perft_exp/analysis/dashboards.py) read:

  init_wandb    the nested resolved config plus flat keys to filter and group by (`run_config`)
  log_final     test results per set and on average, the base model's scores, R's router angles,
                the per-question records as a wandb.Table (logger.table_rows_per_set rows per set)
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from perft_exp import metric_schema as schema
from perft_exp.adapters.config import PerftConfig
from perft_exp.config import TrainConfig
from perft_exp.evaluation.metrics import iter_set_metrics, read_records, record_files
from perft_exp.training.batch import BatchPlan

log = logging.getLogger(__name__)


def run_config(spec: TrainConfig, perft: PerftConfig, params: dict, plan: BatchPlan) -> dict:
    """The flat config keys of metric_schema.CONFIG_KEYS for one run, from its resolved PerftConfig."""
    n, k = perft.spec.routing_numbers(perft.to_dict())
    values = {
        schema.VARIANT: perft.variant,
        schema.LABEL: perft.display_name(),
        schema.N: n,
        schema.K: k,
        schema.R: perft.bottleneck if perft.variant != "none" else None,
        schema.TASK: spec.task.name,
        schema.MODEL: spec.model.name,
        schema.SEED: spec.seed,
        schema.SWEEP: spec.logger.group,
        schema.TRAINABLE: params["trainable"],
        schema.ACTIVATED: params["activated_trainable"],
        schema.TRAINABLE_RATIO: params["trainable_ratio"],
        schema.ACTIVATED_RATIO: params["activated_ratio"],
        schema.GLOBAL_BATCH: plan.global_batch,
        schema.WORLD_SIZE: plan.world_size,
    }
    assert set(values) == set(schema.CONFIG_KEYS), "run_config and metric_schema.CONFIG_KEYS disagree"
    return {key.name: value for key, value in values.items()}


def init_wandb(
    spec: TrainConfig, perft: PerftConfig, output_dir: Path, resolved: dict, flat_config: dict
) -> bool:
    """Start (or resume) the run's W&B run, named by the resolved PerftConfig's run_label, with the flat keys
    of `run_config` beside the run's resolved config (`resolved`, the composed config as plain dicts; its
    `perft` replaced by the resolved one); False when logging is off."""
    logger = spec.logger
    if logger.name != "wandb" or logger.mode == "disabled":
        os.environ["WANDB_DISABLED"] = "true"
        return False
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_MODE"] = str(logger.mode)
    run_id = hashlib.sha1(str(output_dir.resolve()).encode()).hexdigest()[:16]
    config = resolved | {"perft": perft.to_dict()}
    clash = sorted(set(config) & set(flat_config) - {schema.SEED.name})
    assert not clash, f"flat W&B config keys {clash} would replace parts of the Hydra config"
    config.update(flat_config)
    wandb.init(
        project=logger.project,
        entity=logger.entity,
        name=perft.run_label(),
        group=logger.group or f"{spec.task.name}/{spec.model.name}",
        tags=list(logger.tags),
        dir=str(output_dir),
        id=run_id,
        resume="allow",
        mode=str(logger.mode),
        config=config,
    )
    return True


def result_summary(results: dict) -> dict:
    """The test-set and base-model keys of metric_schema from a run's results dict."""
    out: dict = {}
    ev = results.get("eval") or {}
    for name, m in iter_set_metrics(ev):
        out |= {schema.result_key(name, k): m.get(k) for k in schema.SET_METRICS}
    if ev:
        out |= {schema.result_key("average", k): ev.get(src) for k, src in schema.AVERAGE_METRICS.items()}
        out[schema.MAX_TOP_SHARE.name] = ev.get("max_top_prediction_share")
    base = results.get("base_eval") or {}
    for name, m in iter_set_metrics(base):
        out[schema.base_key(name)] = m["accuracy"]
    if base:
        out[schema.BASE_AVERAGE.name] = base.get("average")
    return {k: v for k, v in out.items() if v is not None}


def angle_summary(angles: list[dict]) -> dict:
    """R's learned router against the frozen one (analysis/routing.py router_angles rows)."""
    if not angles:
        return {}
    out = {schema.angle_key(row["layer"]): row["mean_deg"] for row in angles}
    out[schema.ANGLE_MEAN.name] = sum(row["mean_deg"] for row in angles) / len(angles)
    out[schema.ANGLE_RANDOM.name] = sum(row["random_mean_deg"] for row in angles) / len(angles)
    return out


def records_table_rows(records_dir: Path, per_set: int) -> list[list]:
    """The first `per_set` per-question records of every test set, as rows of RECORD_COLUMNS.

    `extracted` and `label` are strings: depending on the set they are labels, numbers or None, and a
    wandb.Table column keeps one type."""
    rows = []
    for name, path in record_files(records_dir).items() if records_dir.is_dir() else ():
        for r in read_records(path)[:per_set]:
            rows.append(
                [
                    name,
                    r["id"],
                    r["prompt"],
                    r["response"],
                    str(r["extracted"]),
                    str(r["label"]),
                    bool(r["correct"]),
                ]
            )
    return rows


def log_final(results: dict, records_dir: Path, table_rows_per_set: int, angles: list[dict]) -> None:
    """Write the summary keys and the records table, then finish the run."""
    import wandb

    if wandb.run is None:
        return
    rows = records_table_rows(records_dir, table_rows_per_set)
    if rows:
        wandb.log({schema.RECORDS.name: wandb.Table(columns=list(schema.RECORD_COLUMNS), data=rows)})
    wandb.run.summary.update(result_summary(results) | angle_summary(angles))
    wandb.finish()
