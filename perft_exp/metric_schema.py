"""Every key a run sends to W&B, named once: the logging code writes these and the dashboards read them.

A renamed metric therefore changes both sides, and `tests/test_dashboards.py` checks that every key a
dashboard panel references is in a real offline run. Torch-free (the dashboard script imports it).

Where a key lands (`Key.where`):
  config   flat keys for filtering, grouping and x-axes, beside the nested Hydra config
           (`variant`, `N`, `K`, `r`, parameter counts and ratios, ...; `training/tracking.py`)
  history  logged during training through the HF Trainer, whose W&B callback renames a logged `name` to
           `train/name` and `eval_name` to `eval/name` (`trainer_name` gives the name to log)
  summary  written once at the end: test-set results, base-model scores, router angles, the records table

Test results are `test/<set>/<metric>` (`result_key`) with metric in SET_METRICS (accuracy, skill =
accuracy - majority, ...; perft_exp/evaluation/metrics.py), their means over sets `test/average/<metric>`,
and the untuned base model's `base/<set>/accuracy`. Routing statistics (perft_exp/analysis/routing.py)
are logged per layer at every validation, `eval/routing/layer<L>/<stat>` and
`eval/routing/layer<L>/load_share/<j>`, with their means over layers `eval/routing/mean/<stat>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WHERE = ("config", "history", "summary")


@dataclass(frozen=True)
class Key:
    """One W&B key: its name as W&B stores it, where it lands, a title for axes, who logs it."""

    name: str
    where: str
    title: str
    variants: tuple[str, ...] = ()  # only runs of these variants log it; () = every run (for readers)

    def __post_init__(self) -> None:
        assert self.where in WHERE, f"{self.name}: where={self.where!r} not in {WHERE}"


def trainer_name(key: Key | str) -> str:
    """The name (or prefix) to pass to `Trainer.log` so that HF's W&B callback stores it as `key`."""
    if isinstance(key, Key):
        assert key.where == "history", f"{key.name} is not logged through the Trainer"
        key = key.name
    if key.startswith("eval/"):
        return "eval_" + key[len("eval/") :]
    assert key.startswith("train/"), key
    return key[len("train/") :]


# --- config: flat and filterable (names chosen not to collide with HF's own config keys) -----------------

VARIANT = Key("variant", "config", "variant")
LABEL = Key("config_label", "config", "config")  # the paper's label: `R (Top2/4)`, `E (Top8/64)`, `qv-LoRA`
N = Key("N", "config", "N (PEFT experts)")  # R, D: N; E: the model's E; S: 1; LoRA baselines: none
K = Key("K", "config", "K (active PEFT experts)")  # R: K; E: the model's k; D: N; S: 1
R = Key("r", "config", "r (bottleneck)")
TASK = Key("task_name", "config", "task")
MODEL = Key("model_name", "config", "model")
SEED = Key("seed", "config", "seed")
SWEEP = Key("sweep_name", "config", "sweep")  # logger.group, which scripts/sweep.py sets to the sweep's name
TRAINABLE = Key("trainable_params", "config", "trainable parameters")
ACTIVATED = Key("activated_params", "config", "activated trainable parameters")
TRAINABLE_RATIO = Key("trainable_ratio", "config", "trainable / base parameters")
ACTIVATED_RATIO = Key("activated_ratio", "config", "activated trainable / active base parameters")
GLOBAL_BATCH = Key("global_batch_size", "config", "global batch size")
WORLD_SIZE = Key("world_size", "config", "processes")
CONFIG_KEYS = (
    VARIANT,
    LABEL,
    N,
    K,
    R,
    TASK,
    MODEL,
    SEED,
    SWEEP,
    TRAINABLE,
    ACTIVATED,
    TRAINABLE_RATIO,
    ACTIVATED_RATIO,
    GLOBAL_BATCH,
    WORLD_SIZE,
)

# --- history: training (HF Trainer logs plus PerftTrainer's terms) -------------------------------------

STEP = Key("train/global_step", "history", "step")
LOSS = Key("train/loss", "history", "training loss")
LM_LOSS = Key("train/lm_loss", "history", "LM loss")
BASE_AUX_LOSS = Key("train/base_aux_loss", "history", "base router aux loss")
ADAPTER_AUX_LOSS = Key("train/adapter_aux_loss", "history", "PEFT router aux loss", ("R",))
LEARNING_RATE = Key("train/learning_rate", "history", "learning rate")
GRAD_NORM = Key("train/grad_norm", "history", "gradient norm")
SKIPPED_STEPS = Key("train/skipped_steps", "history", "skipped steps (non-finite loss)")
VAL_LOSS = Key("eval/loss", "history", "validation loss")
TOKENS_PER_S = Key("train/tokens_per_s", "history", "tokens / s")
STEP_TIME = Key("train/step_time_s", "history", "seconds per optimizer step")
# torch.cuda.max_memory_allocated on a GPU, else the process's peak resident set (CPU runs)
PEAK_MEMORY = Key("train/peak_memory_gb", "history", "peak memory (GiB)")

# --- history: routing at every validation (R and E: the variants that route) ---------------------------

ROUTING = "eval/routing"
ROUTED = ("R", "E")
ROUTING_STATS = {  # stat -> (title, variants)
    "experts_per_token": ("PEFT experts per token", ROUTED),
    "load_entropy": ("load entropy / log N (1 = balanced)", ROUTED),
    "max_load_ratio": ("max load x N / total (1 = balanced)", ROUTED),
    "router_entropy": ("PEFT router entropy (nats)", ("R",)),
}


def routing_key(layer: int | str, stat: str, prefix: str = ROUTING) -> str:
    """`eval/routing/layer<layer>/<stat>`; layer "mean" is the mean over layers."""
    assert stat in ROUTING_STATS or stat.startswith("load_share/"), stat
    return f"{prefix}/{'mean' if layer == 'mean' else f'layer{layer}'}/{stat}"


def load_share_key(layer: int, expert: int, prefix: str = ROUTING) -> str:
    """PEFT expert `expert`'s share of layer `layer`'s token assignments (sums to 1 over experts)."""
    return routing_key(layer, f"load_share/{expert}", prefix)


def routing_mean(stat: str) -> Key:
    """The history key of `stat`'s mean over layers."""
    title, variants = ROUTING_STATS[stat]
    return Key(routing_key("mean", stat), "history", title, variants)


def routing_layers_regex(stat: str) -> str:
    """A regex matching `stat` of every layer (for panels that plot all layers)."""
    return re.escape(f"{ROUTING}/layer") + r"\d+" + re.escape(f"/{stat}")


LOAD_SHARE_REGEX = re.escape(f"{ROUTING}/layer") + r"\d+" + re.escape("/load_share/") + r"\d+"

# --- summary: R's learned router against the frozen one (analysis/routing.py router_angles) -------------

ANGLE_MEAN = Key("routing/mean/angle_mean_deg", "summary", "mean principal angle W_r vs W_g (deg)", ("R",))
ANGLE_RANDOM = Key("routing/mean/angle_random_deg", "summary", "same for a random router (deg)", ("R",))


def angle_key(layer: int) -> str:
    """The summary key of layer `layer`'s mean principal angle W_r vs W_g."""
    return f"routing/layer{layer}/angle_mean_deg"


# --- summary: evaluation on the test sets ---------------------------------------------------------------

SET_METRICS = ("accuracy", "skill", "majority", "chance", "top_prediction_share")
AVERAGE_METRICS = {  # test/average/<metric> -> the key of a run's results' `eval` it comes from
    "accuracy": "average",
    "skill": "average_skill",
    "majority": "average_majority",
    "chance": "average_chance",
    "top_prediction_share": "average_top_prediction_share",
}
MAX_TOP_SHARE = Key("test/max_top_prediction_share", "summary", "largest share of one answer in any set")
RECORDS = Key("test/records", "summary", "per-question records (capped: logger.table_rows_per_set)")
RECORD_COLUMNS = ("set", "id", "prompt", "response", "extracted", "label", "correct")


def result_key(test_set: str, metric: str) -> str:
    """`test/<set>/<metric>`; set "average" is the mean over sets."""
    assert metric in SET_METRICS, metric
    return f"test/{test_set}/{metric}"


def base_key(test_set: str) -> str:
    """The untuned base model's accuracy on a set (or "average")."""
    return f"base/{test_set}/accuracy"


AVERAGE_ACCURACY = Key(result_key("average", "accuracy"), "summary", "average accuracy")
AVERAGE_SKILL = Key(result_key("average", "skill"), "summary", "average skill (accuracy - majority)")
AVERAGE_MAJORITY = Key(result_key("average", "majority"), "summary", "average majority-label rate")
BASE_AVERAGE = Key(base_key("average"), "summary", "base model average accuracy")
