"""`PerftTrainer`: the HF Trainer with PERFT's losses, adapter-only checkpoints and safe stopping.

- loss = LM loss + base router aux loss (transformers, `output_router_logits=True`)
         + perft.aux_loss_coef * R's adapter-router aux loss; the terms are logged separately
- the LM head runs only at the positions whose next token is a label (`logits_to_keep`): with the
  loss on the response only, most of a prompt's logits are never read (trainer.logits_at_labels)
- tokens/s, seconds per optimizer step and peak memory in the training logs
- every logged name comes from perft_exp/metric_schema.py (what the W&B dashboards read)
- checkpoints and the final model hold the adapter only, in PEFT's format (perft_exp/adapters/io.py)
- a non-finite loss stops the run naming the step (or, if configured, skips and counts the step)
- SIGTERM/SIGINT (SLURM preemption, Ctrl-C) saves a checkpoint at the next step boundary, then stops
- every evaluation of R and E also logs per-layer PEFT-expert loads and router entropy
  (perft_exp/adapters/routing_stats.py: RoutingStatsCallback)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import resource
import signal
import time

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from perft_exp import metric_schema as schema
from perft_exp.adapters.io import load_weights, save_adapter
from perft_exp.adapters.model import adapter_aux_loss, trainable_parameters
from perft_exp.adapters.routing_stats import RoutingStatsCallback
from perft_exp.data.collate import IGNORE_INDEX

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


class Preempted(Exception):
    """Raised after the preemption checkpoint is written; the same command resumes the run."""


class PreemptionCallback(TrainerCallback):
    """On SIGTERM/SIGINT: finish the current step, save a checkpoint, stop."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: signals cannot be handled there
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("received signal %d: saving a checkpoint at the end of this step, then stopping", signum)
        self.signal = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose next token is a label in some row of the batch: the only logits that a
    next-token loss reads (positions, 1-D, ascending)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def next_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, num_items_in_batch=None
) -> torch.Tensor:
    """transformers' causal-LM loss for logits kept at `positions` only: each position predicts the
    next token; a sum over the batch's label tokens divided by `num_items_in_batch` when given
    (gradient accumulation), else their mean."""
    targets = labels[:, positions + 1].to(logits.device)
    loss = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    return loss / count


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM's forward takes `logits_to_keep` (transformers >= 4.50 models; an HF-PEFT
    wrapper passes it on to its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def peak_memory_gb() -> float:
    """Peak memory so far (GiB): allocated CUDA memory on a GPU, else the process's peak resident set."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _base_aux_loss(outputs) -> torch.Tensor | None:
    """The base routers' load-balancing loss of a forward (the PERFT tuner keeps it apart when it folds R's
    term into `aux_loss` for TRL's trainers: perft_exp/adapters/tuner.py, PerftModel.forward)."""
    base = getattr(outputs, "base_aux_loss", None)
    return base if base is not None else getattr(outputs, "aux_loss", None)


class PerftTrainer(Trainer):
    def __init__(
        self,
        *args,
        adapter_aux_coef: float = 0.0,
        base_aux_loss: bool = True,
        nonfinite_loss: str = "stop",
        base_model_name: str = "",
        logits_at_labels: bool = True,
        **kwargs,
    ) -> None:
        model = kwargs.get("model", args[0] if args else None)
        if getattr(model, "is_quantized", False) and any(p.requires_grad for p in model.parameters()):
            # The HF Trainer refuses a quantized model unless HF-PEFT adapters are attached; PERFT's experts
            # are trainable adapters of our own (full-precision, beside the quantized frozen weights), so say
            # so.
            model._hf_peft_config_loaded = True
        super().__init__(*args, **kwargs)
        self.adapter_aux_coef = adapter_aux_coef
        self.base_aux_loss = base_aux_loss
        self.nonfinite_loss = nonfinite_loss
        self.base_model_name = base_model_name
        self.skipped_steps = 0
        self._terms: dict[schema.Key, float] = {}
        self._term_count = 0
        self._tokens = 0
        self._tokens_since = time.perf_counter()
        self._window_step: int | None = None  # global_step when the current logging window began
        self._lm_loss: torch.Tensor | None = None
        if logits_at_labels and self.compute_loss_func is None and accepts_logits_to_keep(self._unwrapped()):
            # The Trainer's hook for an own loss: it takes the labels out of the inputs, calls the model,
            # then this (and scales the result for gradient accumulation and devices as it would the model's).
            self.compute_loss_func = self._loss_at_label_positions
        self.add_callback(RoutingStatsCallback(self.log))  # R, E: PEFT-expert loads of every evaluation
        tuner = getattr(self._unwrapped(), "base_model", None)
        if hasattr(tuner, "fold_aux_loss"):  # this trainer adds R's term itself (compute_loss)
            tuner.fold_aux_loss = False

    # ---- loss ---------------------------------------------------------------------------------
    def _loss_at_label_positions(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        """LM loss from the logits at `label_positions` (the model ran with them as `logits_to_keep`),
        plus the base router aux loss as transformers adds it when it computes the loss itself (R's term is
        added by compute_loss)."""
        loss = next_token_loss(outputs.logits, labels, label_positions(labels), num_items_in_batch)
        self._lm_loss = loss.detach()
        base_aux = _base_aux_loss(outputs)
        if base_aux is not None:
            loss = loss + self._base_aux_coef() * base_aux.to(loss.device)
        return loss

    def _base_aux_coef(self) -> float:
        return getattr(getattr(self._unwrapped(), "config", None), "router_aux_loss_coef", 0.0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.base_aux_loss:
            inputs = {**inputs, "output_router_logits": True}
        at_label_positions = self.compute_loss_func == self._loss_at_label_positions and "labels" in inputs
        if at_label_positions:
            inputs = {**inputs, "logits_to_keep": label_positions(inputs["labels"])}
        self._lm_loss = None
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        terms = {}
        base_aux = _base_aux_loss(outputs)
        if base_aux is not None:
            terms[schema.BASE_AUX_LOSS] = float(base_aux.detach())
        # With labels in training the PERFT tuner has added R's aux loss to the model's loss (and exposes it);
        # otherwise (the loss at label positions is built here from the LM and base terms; evaluation) it is
        # added here, once.
        aux = getattr(outputs, "perft_aux_loss", None)
        model_added = aux is not None and not at_label_positions
        if aux is None:
            aux = adapter_aux_loss(model, inputs.get("attention_mask"))
        if aux is not None:
            terms[schema.ADAPTER_AUX_LOSS] = float(aux.detach())
            if not model_added:
                loss = loss + self.adapter_aux_coef * aux.to(loss.device)
        if model.training:
            if self._lm_loss is not None:
                terms[schema.LM_LOSS] = float(self._lm_loss)
            else:
                terms[schema.LM_LOSS] = (
                    float(outputs.loss.detach())
                    - self._base_aux_coef() * terms.get(schema.BASE_AUX_LOSS, 0.0)
                    - (self.adapter_aux_coef * terms[schema.ADAPTER_AUX_LOSS] if model_added else 0.0)
                )
            for k, v in terms.items():
                self._terms[k] = self._terms.get(k, 0.0) + v
            self._term_count += 1
            if "attention_mask" in inputs:
                self._tokens += int(inputs["attention_mask"].sum())
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._window_step is None:  # the first step of this launch (a resumed run starts mid-way)
            self._window_step = self.state.global_step
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            if self.nonfinite_loss == "stop":
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item()}) at step {step}; "
                    "the last good checkpoint is kept. "
                    "Lower trainer.learning_rate, or set trainer.nonfinite_loss=skip to skip such steps."
                )
            log.warning("non-finite loss at step %d: skipping the update", step)
            self.skipped_steps += 1
            model.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients
            loss = torch.zeros_like(loss)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if schema.trainer_name(schema.LOSS) in logs and self._term_count:
            for key, total in self._terms.items():
                logs[schema.trainer_name(key)] = total / self._term_count
            now = time.perf_counter()
            seconds = max(now - self._tokens_since, 1e-9)
            logs[schema.trainer_name(schema.TOKENS_PER_S)] = self._tokens / seconds
            steps = self.state.global_step - (self._window_step or 0)
            if steps > 0:
                logs[schema.trainer_name(schema.STEP_TIME)] = seconds / steps
            logs[schema.trainer_name(schema.PEAK_MEMORY)] = peak_memory_gb()
            logs[schema.trainer_name(schema.SKIPPED_STEPS)] = self.skipped_steps
            self._terms, self._term_count, self._tokens, self._tokens_since = {}, 0, 0, now
            self._window_step = self.state.global_step
        super().log(logs, start_time)

    # ---- adapter-only checkpoints ---------------------------------------------------------------
    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _gathered(self):
        """Under ZeRO-3 the trainable tensors are partitioned: gather them for saving."""
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(trainable_parameters(self._unwrapped()).values()))
        return contextlib.nullcontext()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        self._save(output_dir or self.args.output_dir)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        with self._gathered():
            if self.args.should_save:
                save_adapter(self._unwrapped(), output_dir, self.base_model_name)
        if self.args.should_save and self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_adapter_weights(self, checkpoint_dir: str) -> None:
        load_weights(self._unwrapped(), checkpoint_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._load_adapter_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled:
            return super()._load_best_model()
        log.info(
            "loading the best checkpoint %s (eval_loss %s)",
            self.state.best_model_checkpoint,
            self.state.best_metric,
        )
        self._load_adapter_weights(self.state.best_model_checkpoint)
