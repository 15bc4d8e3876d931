"""Typed schemas for the Hydra config tree (`conf/`), their validation, and the typed run spec built on them.

Every config group has a dataclass here, registered in Hydra's ConfigStore as the group's schema, so a
misspelled key or a wrong type fails at composition time with the key's name. The values are checked in one
place, the dataclasses themselves: `validate(cfg)` builds the composed config as these objects
(OmegaConf.to_object), so each group's `__post_init__` checks its own values (closed choices are the StrEnums
below, and the spec holds their members), `PerftConfig`'s checks the PEFT knobs against the variant registry,
and `TrainConfig`'s the rules across groups; then the file system (model path, data directory: last). What
`validate` returns is the typed run spec; its PerftConfig is resolved against the base model when the adapters
are applied (PerftConfig.resolve), and the run's results, name, labels and W&B config derive from them.

The composed DictConfig stays with the command line, this module and the run directory (perft_exp/run_dir.py),
as the run's identity and saved config: `prepare_run` hands a run its typed spec together with what only the
composed config gives (ComposedRun); every other module reads the typed spec and its groups.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from perft_exp.adapters.config import PerftConfig
from perft_exp.adapters.variants import TAG_KNOBS, get_variant
from perft_exp.checks import EIGHT_BIT_REFUSAL, EXPERT_LORA_4BIT, ConfigError, at_least, one_of
from perft_exp.models.tiny.cache import default_cache_root
from perft_exp.run_dir import OUTPUT_ROOT
from perft_exp.training.batch import batch_plan

REPO_ROOT = Path(__file__).resolve().parent.parent
ZERO_STAGES = (0, 2, 3)
DEFAULT_SEED = 42  # a run with another `seed` carries it in its name (`R-n4-k2-r16-s1`)


# The closed choices of the config (the typed spec holds their members, which equal their strings).
Dtype = StrEnum("Dtype", {"AUTO": "auto", "FLOAT32": "float32", "BFLOAT16": "bfloat16", "FLOAT16": "float16"})
Quantization = StrEnum("Quantization", {"NONE": "none", "BIT4": "4bit", "BIT8": "8bit"})
QuantType = StrEnum("QuantType", {"NF4": "nf4", "FP4": "fp4"})
TaskKind = StrEnum("TaskKind", {"COMMONSENSE": "commonsense", "MATH": "math"})
NonfiniteLoss = StrEnum("NonfiniteLoss", {"STOP": "stop", "SKIP": "skip"})
LoggerMode = StrEnum("LoggerMode", {"OFFLINE": "offline", "ONLINE": "online", "DISABLED": "disabled"})
EvalMode = StrEnum("EvalMode", {"GREEDY": "greedy", "PAPER": "paper", "SCORE": "score"})
EvalProtocol = StrEnum("EvalProtocol", {"FIXED": "fixed", "AUTHORS": "authors"})  # evaluation/protocol.py
Prompt = StrEnum("Prompt", {"CLEAN": "clean", "AUTHORS": "authors"})  # data/prompts.py


# model.gradient_checkpointing's default follows model.quantization (resolved when the config is composed, so
# a run's saved config holds the boolean it ran with).
GRADIENT_CHECKPOINTING_DEFAULT = "${is_4bit:${.quantization}}"


@dataclass
class ModelConfig:
    """The `model` group: which base model, how it loads (dtype, kernels, quantisation)."""

    name: str = field(
        default=MISSING, metadata={"help": "the option's name: the YAML file under conf/model/"}
    )
    pretrained: str = field(
        default=MISSING,
        metadata={
            "help": "hub id (org/name), local checkpoint directory, or tiny:<name> (built locally and cached)"
        },
    )
    model_type: str = field(
        default=MISSING,
        metadata={"help": "transformers' model_type; picks the MoE family (perft_exp/models/arch/)"},
    )
    architecture: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "the HF config's numbers, so the model builds offline on meta (parameter counts)"},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 where the GPU has it, else float32) | float32 | bfloat16 | float16"},
    )
    experts_implementation: str | None = field(
        default="grouped_mm",
        metadata={"help": "transformers' fused-experts kernel: eager | grouped_mm | batched_mm"},
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "transformers' attention kernel (null: its default)"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run a hub repository's own code (off unless you trust it)"}
    )
    revision: str | None = field(
        default=None, metadata={"help": "the hub revision (branch, tag or commit) to load"}
    )
    quantization: str = field(
        default="none",
        metadata={
            "help": "none | 4bit: the frozen base in bitsandbytes 4-bit, the nn.Linear layers and the fused "
            "MoE experts alike (perft_exp/models/quantization.py). Unquantised: the routers (their "
            "choices are what E copies), embeddings, lm_head, norms. 8bit is refused: bitsandbytes has no "
            "8-bit form for the fused experts"
        },
    )
    quant_type: str = field(
        default="nf4", metadata={"help": "4-bit data type: nf4 (QLoRA's NormalFloat) | fp4"}
    )
    double_quant: bool = field(
        default=True,
        metadata={"help": "quantise the 4-bit blocks' scales too (about 0.4 bits per weight less)"},
    )
    compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "the 4-bit Linear layers' compute dtype: auto (= model.dtype resolved) | float32 | "
            "bfloat16 | float16 (the experts dequantise to model.dtype, the dtype of the hidden states)"
        },
    )
    gradient_checkpointing: bool = field(
        default=GRADIENT_CHECKPOINTING_DEFAULT,  # true with quantization=4bit, else false
        metadata={
            "help": "recompute activations in the backward pass (less memory, more time); default: on with "
            "quantization=4bit (then only the block being recomputed holds its dequantised experts), else off"
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the training forward and backward (the HF Trainer's torch_compile); "
            "PERFT adds no graph break to the base model's"
        },
    )

    def __post_init__(self) -> None:
        self.dtype = one_of("model.dtype", self.dtype, Dtype)
        self.quantization = one_of("model.quantization", self.quantization, Quantization)
        if self.quantization == Quantization.BIT8:
            raise ValueError(f"model.quantization=8bit is refused: {EIGHT_BIT_REFUSAL}")
        self.quant_type = one_of("model.quant_type", self.quant_type, QuantType)
        self.compute_dtype = one_of("model.compute_dtype", self.compute_dtype, Dtype)
        if self.gradient_checkpointing == GRADIENT_CHECKPOINTING_DEFAULT:  # built in Python, not composed
            self.gradient_checkpointing = self.quantization == Quantization.BIT4


@dataclass
class TaskConfig:
    """The `task` group: the training file, the test sets and how examples become tokens."""

    name: str = field(default=MISSING, metadata={"help": "the option's name: the YAML file under conf/task/"})
    kind: str = field(
        default=MISSING,
        metadata={"help": "commonsense | math: the answer extraction rules and the generation length"},
    )
    data_dir: str = field(
        default=MISSING,
        metadata={
            "help": "LLM-Adapters layout: <data_dir>/<train_file>.json and <data_dir>/dataset/<set>/test.json"
        },
    )
    train_file: str = field(
        default=MISSING,
        metadata={"help": "the training file's stem under data_dir (commonsense_170k, math_10k, ...)"},
    )
    test_sets: list[str] = field(
        default_factory=list,
        metadata={"help": "the test sets to evaluate (names as in LLM-Adapters: boolq, piqa, ...)"},
    )
    synthetic: bool = field(
        default=False, metadata={"help": "generate the shipped synthetic suite into data_dir on first use"}
    )
    hub_id: str | None = field(
        default=None, metadata={"help": "a `datasets` hub id to fetch the data from (online users only)"}
    )
    val_size: int = field(
        default=120,
        metadata={
            "help": "training examples held out for validation (the best checkpoint's criterion); 0: none"
        },
    )
    val_seed: int = field(default=42, metadata={"help": "the seed of the validation split"})
    cutoff_len: int = field(
        default=256,
        metadata={
            "help": "tokens per training example; longer ones are truncated (and counted in the results)"
        },
    )
    train_on_inputs: bool = field(
        default=True,
        metadata={
            "help": "the loss also covers the prompt's tokens (the authors' setting), not only the answer"
        },
    )
    prompt: str = field(
        default="clean",
        metadata={
            "help": "training template: clean | authors (the authors' template with its stray indentation)"
        },
    )
    max_train_examples: int | None = field(
        default=None, metadata={"help": "use only the first N training examples (null: all)"}
    )
    max_test_examples: int | None = field(
        default=None,
        metadata={"help": "use only the first N questions of each test set, for quick looks (null: all)"},
    )

    def __post_init__(self) -> None:
        from perft_exp.data.formats import canonical_test_set

        self.kind = one_of("task.kind", self.kind, TaskKind)
        self.prompt = one_of("task.prompt", self.prompt, Prompt)
        at_least("task.cutoff_len", self.cutoff_len)
        at_least("task.val_size", self.val_size, strict=False)
        for name in self.test_sets:
            try:
                canonical_test_set(name)
            except ValueError as e:
                raise ValueError(f"task.test_sets: {e}") from e


@dataclass
class TrainerConfig:
    """The `trainer` group: the HF Trainer's schedule, batch plan and checkpointing."""

    name: str = field(
        default=MISSING, metadata={"help": "the option's name: the YAML file under conf/trainer/"}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "the peak learning rate"})
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "epochs over the training set (when max_steps is not set)"}
    )
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; > 0 overrides num_train_epochs"})
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "examples per optimizer step over all ranks, split over them (null: per-device batch "
            "x accumulation x ranks); perft_exp/training/batch.py"
        },
    )
    per_device_train_batch_size: int | None = field(
        default=16,
        metadata={"help": "examples per forward on one device (null with a global batch: global / ranks)"},
    )
    per_device_eval_batch_size: int = field(
        default=16, metadata={"help": "examples per validation forward on one device"}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "forwards per optimizer step (with global_batch_size null)"}
    )
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps of the learning rate"})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={"help": "the HF Trainer's schedule after warm-up (linear, cosine, constant, ...)"},
    )
    optim: str = field(
        default="adamw_torch",
        metadata={
            "help": "the HF Trainer's optimizer (its `optim` names): adamw_torch, the one every documented "
            "number used; adamw_torch_fused, one kernel over all adapter weights (a faster optimizer step: "
            "docs/benchmarks.md); paged_adamw_8bit and other bitsandbytes ones"
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW's weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    eval_steps: int = field(default=80, metadata={"help": "validate every this many steps"})
    save_steps: int = field(
        default=80, metadata={"help": "checkpoint every this many steps (a multiple of eval_steps)"}
    )
    save_total_limit: int = field(
        default=3, metadata={"help": "checkpoints kept on disk (the best one is always kept)"}
    )
    logging_steps: int = field(default=10, metadata={"help": "log the losses every this many steps"})
    base_aux_loss: bool = field(
        default=True, metadata={"help": "keep the base model's router aux loss in the loss (the authors did)"}
    )
    nonfinite_loss: str = field(
        default="stop",
        metadata={
            "help": "a step with a NaN/inf loss: stop (the run fails, naming the step) | skip (and count it)"
        },
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "data loader worker processes"})
    train_sampling_strategy: str = field(
        default="random",
        metadata={
            "help": "random | group_by_length (batches of similar lengths, still shuffled: less padding) "
            "| sequential"
        },
    )
    logits_at_labels: bool = field(
        default=True,
        metadata={
            "help": "run the LM head only at the positions the loss reads (the same loss, less memory)"
        },
    )
    seed: int = field(
        default=DEFAULT_SEED,
        metadata={"help": "the trainer's seed (data order); conf/train.yaml sets it to the top-level seed"},
    )
    cpu_threads: int | None = field(
        default=2,
        metadata={
            "help": "torch's CPU threads for a run without a GPU (null: torch's default, one per core); the "
            "thread count sets how float sums are split, so a pinned count keeps the miniature's digits "
            "independent of the core count and OMP_NUM_THREADS"
        },
    )

    def __post_init__(self) -> None:
        if self.cpu_threads is not None:
            at_least("trainer.cpu_threads", self.cpu_threads)
        self.nonfinite_loss = one_of("trainer.nonfinite_loss", self.nonfinite_loss, NonfiniteLoss)
        at_least("trainer.learning_rate", self.learning_rate, strict=False)
        # splits on the ranks this process started with
        batch_plan(self, int(os.environ.get("WORLD_SIZE", "1")))
        at_least("trainer.warmup_steps", self.warmup_steps, strict=False)
        at_least("trainer.eval_steps", self.eval_steps)
        at_least("trainer.save_steps", self.save_steps)
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("trainer.num_train_epochs must be > 0 when trainer.max_steps is not set")
        if self.save_steps % self.eval_steps:
            raise ValueError(
                f"trainer.save_steps={self.save_steps} must be a multiple of "
                f"trainer.eval_steps={self.eval_steps} "
                "(the best checkpoint is chosen by validation loss)"
            )


@dataclass
class DeepSpeedConfig:
    """The `deepspeed` group: the ZeRO stage and offloading (stage 0: no DeepSpeed)."""

    name: str = field(
        default="none", metadata={"help": "the option's name: the YAML file under conf/deepspeed/"}
    )
    stage: int = field(default=0, metadata={"help": "ZeRO stage: 0 (no DeepSpeed), 2 or 3"})
    offload_optimizer: bool = field(
        default=False, metadata={"help": "keep the optimizer state in CPU memory"}
    )
    offload_param: bool = field(
        default=False, metadata={"help": "keep the parameters in CPU memory (stage 3)"}
    )

    def __post_init__(self) -> None:
        one_of("deepspeed.stage", self.stage, ZERO_STAGES)


@dataclass
class LoggerConfig:
    """The `logger` group: W&B's project, mode (offline by default) and grouping."""

    name: str = field(default="none", metadata={"help": "wandb | none"})
    project: str = field(default="perft-exp", metadata={"help": "the W&B project"})
    entity: str | None = field(
        default=None, metadata={"help": "the W&B entity (team or user; null: the default)"}
    )
    mode: str = field(
        default="offline",
        metadata={"help": "offline (written locally, `wandb sync` later) | online | disabled"},
    )
    group: str | None = field(
        default=None, metadata={"help": "the W&B group (null: <task>/<model>; a sweep sets its name)"}
    )
    tags: list[str] = field(default_factory=list, metadata={"help": "W&B tags of the run"})
    table_rows_per_set: int = field(
        default=32, metadata={"help": "per-question records per test set in the run's W&B table"}
    )

    def __post_init__(self) -> None:
        self.mode = one_of("logger.mode", self.mode, LoggerMode)
        at_least("logger.table_rows_per_set", self.table_rows_per_set, strict=False)


@dataclass
class EvalConfig:
    """The `eval` group: how the test sets are answered and scored."""

    enabled: bool = field(default=True, metadata={"help": "evaluate the test sets after training"})
    mode: str = field(
        default="greedy",
        metadata={
            "help": "greedy (default) | paper (4-beam search, the authors' protocol) "
            "| score (label likelihood)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "questions per generation batch"})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "generated tokens per answer (null: the task kind's length)"}
    )
    protocol: str = field(
        default="fixed",
        metadata={"help": "prompt strings and answer matching: fixed | authors (evaluation/protocol.py)"},
    )
    base: bool = field(
        default=False,
        metadata={
            "help": "also evaluate the untuned base model, cached across runs (the results' base_eval)"
        },
    )

    def __post_init__(self) -> None:
        self.mode = one_of("eval.mode", self.mode, EvalMode)
        self.protocol = one_of("eval.protocol", self.protocol, EvalProtocol)
        at_least("eval.batch_size", self.batch_size)


@dataclass
class TrainConfig:
    """The whole run config (`conf/train.yaml`): the groups, the PERFT knobs and the run's identity."""

    model: ModelConfig = field(default=MISSING, metadata={"help": "the model group"})
    perft: PerftConfig = field(
        default_factory=PerftConfig, metadata={"help": "the PERFT knobs (variant, N, K, r, ...)"}
    )
    task: TaskConfig = field(default=MISSING, metadata={"help": "the task group"})
    trainer: TrainerConfig = field(default=MISSING, metadata={"help": "the trainer group"})
    deepspeed: DeepSpeedConfig = field(
        default_factory=DeepSpeedConfig, metadata={"help": "the DeepSpeed group"}
    )
    logger: LoggerConfig = field(default_factory=LoggerConfig, metadata={"help": "the logger group"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "the evaluation group"})
    seed: int = field(
        default=DEFAULT_SEED,
        metadata={
            "help": "adapter init and data order (trainer.seed follows it); another value ends the run "
            "name in -s<seed>"
        },
    )
    name: str = field(
        default=MISSING,
        metadata={"help": "the run name; the run directory is <output_root>/runs/<task>/<model>/<name>"},
    )
    output_dir: str = field(
        default=MISSING,
        metadata={
            "help": "the run directory: Hydra's output directory, <output_root>/runs/<task>/<model>/<name>"
        },
    )
    output_root: str = field(
        default=OUTPUT_ROOT, metadata={"help": "runs, base-model evaluations and sweep records live below it"}
    )
    resume: bool = field(
        default=True, metadata={"help": "continue from the newest complete checkpoint in output_dir"}
    )
    debug: bool = field(default=False, metadata={"help": "full stack traces on errors (else one line)"})

    def __post_init__(self) -> None:
        """The rules across groups (each group has checked its own values)."""
        if self.perft.variant == "none" and not (self.eval.enabled and self.task.test_sets):
            raise ValueError(
                "variant=none evaluates the frozen base model only; it needs eval.enabled=true and test sets"
            )
        if self.model.quantization != Quantization.NONE and self.deepspeed.stage == 3:
            raise ValueError("model.quantization with deepspeed.stage=3 is not supported; use stage 0 or 2")
        if self.model.quantization == Quantization.BIT4 and "experts" in self.perft.spec.lora_targets:
            raise ValueError(
                f"perft.variant={self.perft.variant} with model.quantization=4bit: {EXPERT_LORA_4BIT}"
            )


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore: the root and one per group."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, node in (
        ("model", ModelConfig),
        ("task", TaskConfig),
        ("trainer", TrainerConfig),
        ("deepspeed", DeepSpeedConfig),
        ("logger", LoggerConfig),
        ("eval", EvalConfig),
    ):
        cs.store(group=group, name=f"{group}_schema", node=node)


def perft_config(cfg: DictConfig) -> PerftConfig:
    """The validated PerftConfig of a composed run config (raises ConfigError naming the key)."""
    try:
        return PerftConfig(**OmegaConf.to_container(cfg.perft, resolve=True))
    except ValueError as e:
        raise ConfigError(str(e)) from e


def to_spec(cfg: DictConfig) -> TrainConfig:
    """The typed run spec of a composed config, every value checked by its schema dataclass (ConfigError
    naming the key); the file system is not looked at (validate adds that)."""
    try:
        return OmegaConf.to_object(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def validate(cfg: DictConfig) -> TrainConfig:
    """The typed run spec of a composed config, checked before any model loads (ConfigError naming the key).

    Every value is checked by its schema dataclass (see the module docstring); the file system last, so a
    missing data directory is the only error left when it is reported (scripts/sweep.py treats it as a
    note)."""
    spec = to_spec(cfg)
    check_paths(spec)
    return spec


def check_paths(spec: TrainConfig) -> None:
    """The spec's paths exist: a local model.pretrained, then task.data_dir (ConfigError naming the key)."""
    pretrained = str(spec.model.pretrained)
    if pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1:  # a path (hub ids are org/name)
        if not Path(pretrained).expanduser().is_dir():
            raise ConfigError(
                f"model.pretrained={pretrained!r} is not a directory (a local model or a hub id org/name)"
            )
    t = spec.task
    if not t.synthetic and t.hub_id is None and not Path(t.data_dir).is_dir():
        raise ConfigError(
            f"task.data_dir={t.data_dir!r} does not exist; fetch the LLM-Adapters files with "
            "`python scripts/fetch_data.py --data-dir <dir>` or point task.data_dir at them"
        )


@dataclass(frozen=True)
class ComposedRun:
    """A composed config as a run takes it (`prepare_run`): the typed spec every stage reads, and what only
    the composed config gives. The DictConfig itself goes along as the run's identity and saved config, for
    perft_exp/run_dir.py alone (RunDir.check, RunDir.write_results); nothing else reads it."""

    spec: TrainConfig
    config: DictConfig
    changes: list[str]  # describe_changes(changed_from_defaults(config)): the results' config_changes
    resolved: dict  # the resolved config as plain dicts and lists: W&B's nested config


def prepare_run(cfg: DictConfig) -> ComposedRun:
    """A composed config made ready for a run: a local checkpoint's architecture recorded in it
    (record_checkpoint_architecture), validated into the typed spec, its derived values taken once."""
    record_checkpoint_architecture(cfg)
    spec = validate(cfg)
    changes = describe_changes(changed_from_defaults(cfg))
    return ComposedRun(spec, cfg, changes, OmegaConf.to_container(cfg, resolve=True))


# Keys of a checkpoint's config.json that are bookkeeping, not architecture.
_NOT_ARCHITECTURE = (
    "transformers_version",
    "architectures",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "auto_map",
    "model_type",
)


def checkpoint_architecture(model: DictConfig) -> dict | None:
    """The architecture numbers in the config.json of the local checkpoint `model.pretrained` points at
    (None for hub ids and tiny:<name>): what a run records instead of the YAML's numbers."""
    path = Path(str(model.pretrained)) / "config.json"
    if str(model.pretrained).startswith("tiny:") or not path.is_file():
        return None
    config = json.loads(path.read_text())
    if config.get("model_type") != model.model_type:
        raise ConfigError(
            f"model.model_type={model.model_type!r} but {path.parent} holds a "
            f"{config.get('model_type')!r} model"
        )
    return {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}


def record_checkpoint_architecture(cfg: DictConfig) -> None:
    """model.pretrained=<local dir>: the config (run_config.json, config.yaml, W&B) holds that checkpoint's
    architecture numbers, not the YAML's. The run's name stays the one its directory was made with."""
    loaded = checkpoint_architecture(cfg.model)
    if loaded is not None:
        with open_dict(cfg):
            cfg.name = cfg.name  # resolved before the numbers change: the directory Hydra made
            cfg.model.architecture = loaded


def cache_root() -> Path:
    """Where built tiny models and synthetic data live ($PERFT_CACHE, else <repo>/.cache/perft_exp)."""
    return default_cache_root()


def run_tag(perft: DictConfig | dict, seed: int | None = None) -> str:
    """A directory-safe run name from the PERFT knobs: `R-n4-k2-r16`, `E-r16`, `qv_lora-r16`, `none`.

    Only knobs that differ from the paper's defaults are added, so the tag is stable and readable;
    a seed other than DEFAULT_SEED ends it (`R-n4-k2-r16-s1`).
    """
    return get_variant(perft["variant"]).run_tag(perft) + seed_suffix(seed)


def seed_suffix(seed: int | None) -> str:
    """What run_tag appends for `seed`: "" for the default seed (or none), else `-s<seed>`."""
    return "" if seed is None or int(seed) == DEFAULT_SEED else f"-s{int(seed)}"


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _identity_source(cfg: DictConfig) -> dict:
    """The config's keys that define what a run computes, unresolved (resolving `name` would recurse)."""
    from perft_exp.run_dir import config_identity

    return config_identity(OmegaConf.to_container(cfg, resolve=False))


def _resolve(source: dict) -> dict:
    return OmegaConf.to_container(OmegaConf.create(source), resolve=True)


@functools.lru_cache(maxsize=64)
def _defaults_source(overrides: tuple[str, ...]) -> dict:
    """The default config with only `overrides`, unresolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside the app (or a compose of ours): same config dir
        cfg = hydra_compose(config_name="train", overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=list(overrides))
    return _identity_source(cfg)


def changed_from_defaults(cfg: DictConfig) -> dict:
    """`{key: value}` of the resolved config where it differs from the defaults of the same model, task,
    PERFT knobs and seed (what the run name already shows). How the command line spelled it does not matter:
    `eval.mode=greedy` (the default) changes nothing, `trainer.learning_rate=1e-3` equals `=0.001`."""
    from perft_exp.run_dir import flatten

    have = _resolve(_identity_source(cfg))
    perft = have["perft"]
    groups = (f"model={have['model']['name']}", f"task={have['task']['name']}", f"variant={perft['variant']}")
    # The knobs and the seed are plain values: setting them on the composed defaults is what their overrides
    # would do, so one cached compose per (model, task, variant) serves every job of a grid.
    defaults = copy.deepcopy(_defaults_source(groups))
    defaults["seed"] = have["seed"]
    defaults["perft"].update({k: perft[k] for k in TAG_KNOBS})
    a, b = flatten(have), flatten(_resolve(defaults))
    return {k: a.get(k) for k in sorted(a.keys() | b.keys()) if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


_ABSENT = object()


def describe_changes(changes: dict) -> list[str]:
    """A short reading of changed_from_defaults: `trainer=debug` for a group whose `name` changed (its other
    keys then go unsaid), else `key=value`."""
    groups = {k.rsplit(".", 1)[0] for k in changes if k.endswith(".name") and k.count(".") == 1}
    out = [f"{g}={changes[f'{g}.name']}" for g in sorted(groups)]
    return out + [f"{k}={_fmt(v)}" for k, v in changes.items() if k.split(".", 1)[0] not in groups]


def run_name(perft: DictConfig | dict, seed: int | None = None, *, _root_: DictConfig | None = None) -> str:
    """The default run directory name: run_tag (with the seed), plus a short hash of the config's difference
    from the defaults (changed_from_defaults).

    `python train.py`, `python train.py variant=R perft.num_experts=4` and `python train.py eval.mode=greedy`
    share `R-n4-k2-r16`; `python train.py seed=1` runs in `R-n4-k2-r16-s1`; `python train.py deepspeed=zero2
    trainer=debug` gets `R-n4-k2-r16-<hash>`, so runs of different configs never share a directory, and the
    same config finds its run again.
    """
    tag = run_tag(perft, seed)
    changes = changed_from_defaults(_root_) if _root_ is not None else {}
    if not changes:
        return tag
    text = "\n".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in changes.items())
    return f"{tag}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def register_resolvers() -> None:
    """Register the config's resolvers: run_tag, run_name, is_4bit, perft_cache (idempotent)."""
    if not OmegaConf.has_resolver("run_tag"):
        OmegaConf.register_new_resolver("run_tag", run_tag)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("is_4bit"):
        OmegaConf.register_new_resolver("is_4bit", lambda quantization: str(quantization) == "4bit")
    if not OmegaConf.has_resolver("perft_cache"):
        OmegaConf.register_new_resolver("perft_cache", lambda: str(cache_root()))


def setup() -> None:
    """Register schemas and resolvers (idempotent); call before Hydra composes."""
    register_schemas()
    register_resolvers()


CONF_DIR = REPO_ROOT / "conf"


def group_spec(node: DictConfig) -> Any:
    """One group of a composed config (`cfg.model`, `cfg.eval`, ...) as its schema dataclass, its values
    checked (ConfigError naming the key), without the run's rules across groups: for scripts that use a few
    groups."""
    try:
        return OmegaConf.to_object(node)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def compose_spec(overrides: list[str] | None = None) -> TrainConfig:
    """The typed spec of the app's config with `overrides` (scripts, tests): compose, then to_spec (the file
    system is not looked at: validate does that)."""
    return to_spec(compose(overrides))


def model_config(name: str) -> ModelConfig:
    """One option of the model group on its own, typed: conf/model/<name>.yaml over ModelConfig (bench.py)."""
    register_resolvers()
    node = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    )
    try:
        return OmegaConf.to_object(node)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def compose(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose the app's config outside @hydra.main (scripts, tests). `output_dir` gets a placeholder."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    setup()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(
            config_name=config_name, overrides=list(overrides or []), return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.name = cfg.name  # resolved once, here
        run_dir = cfg.hydra.run.dir  # resolves from the run's own keys, like the app's run directory
        del cfg["hydra"]
    cfg.output_dir = run_dir
    return cfg
