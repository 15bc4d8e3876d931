"""PERFT as a Hugging Face PEFT method: a config, a tuner layer and a tuner model,
registered with peft on import.

    import perft_exp                      # registers peft_type "PERFT" with peft
    from peft import get_peft_model
    model = get_peft_model(base, perft_exp.PerftConfig(variant="R", num_experts=4, top_k=2, bottleneck=16))
    # writes adapter_config.json ("peft_type": "PERFT") + adapter_model.safetensors:
    model.save_pretrained("adapter")

PEFT's own methods wrap a Linear: the wrapper takes the module's place. PERFT instead sits *beside* each MoE
block (y = moe(x) + peft(x)), so nothing of the base model moves: the block, its router and experts keep their
module paths (families that collect router logits by path, transformers' router-logit hooks, ZeRO-3 leaf
modules all still find them). A `PerftTunerLayer` is added as the child `perft` of the block and holds one
`PerftLayer` per named adapter in the ModuleDict `perft_layer`; a forward hook on the block adds the active
adapters' output, and for the variants that reuse the frozen routing (E, R's authors-defect ablation) a
forward hook on the block's router hands its (logits, top-k weights, top-k indices) over, so the routing is
computed once and is exactly the base model's. E's PEFT experts, one per FFN expert, can instead run
inside the frozen experts' grouped computation (perft_exp.adapters.fused): on the families where that is the
same, the experts module's forward is replaced on that instance (its parameters, paths and state dict
unchanged), and the block's hook skips what already ran there.

Tensor keys follow PEFT's convention: in the model `...mlp.perft.perft_layer.<adapter>.experts.A`, in the file
`base_model.model....mlp.perft.perft_layer.experts.A` (the adapter name removed, so it loads under any name;
transformers' `load_adapter` inserts it after the `perft_` prefix).

Registration: peft's `register_peft_method` accepts only names of its own `PeftType` enum, so PERFT adds
itself to peft.mapping's three tables under a `str` enum member of its own (`PerftType.PERFT == "PERFT"`).
It does so as this module's last statement, as PEFT's own methods register when their module is imported;
`_perft_exp.py` (the repository root) only arranges for this module to be imported once peft is.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path

import peft.mapping
import torch
from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from safetensors import SafetensorError, safe_open
from torch import nn

from perft_exp.adapters import config as knobs
from perft_exp.adapters.fused import fusable_experts, grouped_experts_forward, runs_grouped_mm
from perft_exp.adapters.layer import PerftLayer, adapter_aux_loss
from perft_exp.adapters.variants import Routing
from perft_exp.models.arch import MoEArchitecture, architecture_for, find_moe_blocks

PREFIX = "perft_"  # PEFT's per-method prefix: the ModuleDict of adapters is `perft_layer`
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
# The base-model facts an adapter's tensor shapes and routing depend on;
# a PERFT adapter_config.json records them.
SIGNATURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
)
MERGE_REFUSAL = (
    "PERFT cannot be merged into the base weights: its PEFT experts are routed per token (R, E) or run in "
    "parallel with the whole MoE block (D, S), so no fixed weight update equals them; use unload() for the "
    "base model"
)


_KNOB_DEFAULTS = {f.name: f.default for f in fields(knobs.PerftConfig)}


class PerftType(StrEnum):
    """PERFT's `str` enum member beside peft's PeftType (registration: the module docstring)."""

    PERFT = "PERFT"


class AdapterError(ValueError):
    """An adapter directory that is missing, corrupt, or does not fit the model/variant."""


def base_signature(config) -> dict:
    """The base-model facts an adapter depends on (from a transformers config)."""
    return {k: getattr(config, k) for k in SIGNATURE_KEYS if getattr(config, k, None) is not None}


def quantization_record(config) -> dict | None:
    """How a transformers config's model was quantised: method, bits, 4-bit type, double quantisation, compute
    dtype; None when it was not."""
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    d = quant if isinstance(quant, dict) else quant.to_dict()
    four = bool(d.get("load_in_4bit"))
    return {
        "quant_method": str(d.get("quant_method")),
        "bits": 4 if four else 8 if d.get("load_in_8bit") else None,
        "quant_type": d.get("bnb_4bit_quant_type") if four else None,
        "double_quant": d.get("bnb_4bit_use_double_quant") if four else None,
        "compute_dtype": str(d.get("bnb_4bit_compute_dtype")) if four else None,
    }


def check_signature(saved: dict, config, where: str = "") -> None:
    """AdapterError naming the first base-model fact in which `config` differs from
    the adapter's `saved` ones."""
    have = base_signature(config)
    for key, value in saved.items():
        if have.get(key) != value:
            raise AdapterError(
                f"PERFT adapter {where}was trained on a base model with {key}={value}, "
                f"but this model has {key}={have.get(key)}"
            )


@dataclass
class PerftPeftConfig(PeftConfig, knobs.PerftConfig):
    """PERFT's PEFT config: the knobs of `perft_exp.adapters.config.PerftConfig` (one list: the Hydra `perft`
    group's schema, inherited here) plus PEFT's fields. Exported as `perft_exp.PerftConfig`.

    Attached to a model, it is resolved against it (E's N and K, the aux-loss coefficient) and
    `base_signature` records the base model's facts, so the saved adapter_config.json says what ran and on
    what it loads."""

    base_signature: dict | None = field(
        default=None, metadata={"help": "the base model's facts (filled when attached; checked when loading)"}
    )
    base_quantization: dict | None = field(
        default=None,
        metadata={
            "help": "how the base it was attached to was quantised (None: not at all); a record only: an "
            "adapter loads on the base in any precision"
        },
    )

    def __post_init__(self) -> None:
        self.peft_type = PerftType.PERFT
        if self.task_type is None:
            self.task_type = "CAUSAL_LM"
        PeftConfig.__post_init__(self)
        # A resolved config (it carries the base model's facts) holds the knobs E took from the model: keep
        # them through the checks that refuse them from a user.
        from_model = {k: getattr(self, k) for k in self.spec.from_model} if self.base_signature else {}
        for key in from_model:
            setattr(self, key, None)
        # `PerftConfig(variant="E")`, `PerftConfig(variant="S")`: the routing knobs left at their defaults are
        # the model's (E) or pinned (S), not a conflicting choice.
        for key in (*self.spec.from_model, *self.spec.fixed):
            if getattr(self, key) == _KNOB_DEFAULTS[key]:
                setattr(self, key, None)
        knobs.PerftConfig.__post_init__(self)
        for key, value in from_model.items():
            setattr(self, key, value)

    def knobs(self) -> knobs.PerftConfig:
        """The PERFT knobs alone (what the run directory, run name and results record)."""
        names = {f.name for f in fields(knobs.PerftConfig)}
        return knobs.PerftConfig.from_dict({k: v for k, v in asdict(self).items() if k in names})

    @classmethod
    def from_knobs(cls, cfg: knobs.PerftConfig, **peft_fields) -> PerftPeftConfig:
        """The PEFT config of a knobs config, resolved or not (E's model-given N and K are carried over)."""
        d = cfg.to_dict()
        held = {k: d.pop(k) for k in cfg.spec.from_model if d.get(k) is not None}
        out = cls(**{**d, **dict.fromkeys(held)}, **peft_fields)
        for key, value in held.items():
            setattr(out, key, value)
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs):
        """PeftConfig.from_pretrained, with a local adapter checked first: a corrupt config or weights file is
        one AdapterError naming it, before anything is attached to a model."""
        path = Path(pretrained_model_name_or_path, subfolder or "")
        if path.is_dir():
            check_adapter_files(path)
        return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)


def read_config_json(cfg_path: Path) -> dict:
    """An adapter_config.json as a dict; AdapterError naming a missing or unparsable file."""
    if not cfg_path.is_file():
        raise AdapterError(f"no adapter config at {cfg_path}")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(
            f"adapter config {cfg_path} is not valid JSON ({e}); the file is truncated or corrupted"
        ) from e


def check_adapter_files(path: str | os.PathLike) -> dict:
    """The adapter_config.json of a local PERFT/PEFT adapter directory, its weights' header read: AdapterError
    naming a missing, truncated or corrupted file."""
    path = Path(path)
    meta = read_config_json(path / CONFIG_NAME)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        if (
            path / "adapter_model.bin"
        ).is_file():  # saved with safe_serialization=False: PEFT reads it itself
            return meta
        raise AdapterError(f"no adapter weights at {weights}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"adapter weights {weights} are truncated or corrupted: {e}") from e
    return meta


class PerftTunerLayer(nn.Module, BaseTunerLayer):
    """The PEFT experts of one MoE block, for every named adapter, as the block's child `perft`.

    Not a wrapper: the block keeps its place and runs unchanged; forward hooks add  sum_active peft_a(x)
    to its output and hand the frozen router's output to the adapters that route by it."""

    adapter_layer_names = ("perft_layer",)
    other_param_names = ()

    def __init__(self, block: nn.Module, router: nn.Module, arch: MoEArchitecture) -> None:
        nn.Module.__init__(self)
        # The family's reading of its router's output as (logits, top-k weights, top-k indices); a plain
        # attribute, not a submodule, so the block's state dict is unchanged.
        self._routing = functools.partial(arch.routing, block)
        self.perft_layer = nn.ModuleDict()
        self._active_adapter: str | list[str] = "default"
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._router_output = None  # the block's router's last output, until the block's hook reads it
        self._router_input = None  # and its input
        # E inside the frozen experts' grouped computation (perft_exp.adapters.fused): the experts module, a
        # plain entry (a module attribute would register it twice), and this forward's (layers, input) that
        # ran there, which the block's hook then skips.
        experts = getattr(block, arch.experts_attr, None)
        self.__dict__["_base_experts"] = experts if fusable_experts(arch.model_type, experts) else None
        self._fused: tuple = ()
        # The router's hook goes on with the first adapter that routes by it (E, R's authors' defect): the
        # others never pay for a hook call per block per forward. A partial, not the router: a module
        # attribute would be registered as a submodule.
        self._hook_router = functools.partial(router.register_forward_hook, self._capture_routing)
        self._hooks = [block.register_forward_hook(self._add, with_kwargs=True)]  # then the router's, if any

    def update_layer(
        self,
        adapter_name: str,
        cfg: knobs.PerftConfig,
        hidden_size: int,
        base_top_k: int,
        model_dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        """Add (or replace) adapter `adapter_name`'s PerftLayer on this block."""
        layer = PerftLayer(cfg, hidden_size, base_top_k, model_dtype=model_dtype, device=device)
        self.perft_layer[adapter_name] = layer
        if layer.needs_base_routing and len(self._hooks) == 1:  # attached, the router not yet hooked
            self._hooks.append(self._hook_router())
        experts = self._base_experts
        if layer.fits_base_experts and experts is not None and "forward" not in experts.__dict__:
            # The experts' forward, on this instance only: E's pairs join the frozen ones where it can.
            experts.forward = functools.partial(self._run_experts, experts.forward)
        self.set_adapter(self.active_adapters)

    def remove_hooks(self) -> None:
        """Take the forward hooks off the block and its router."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._base_experts is not None:
            self._base_experts.__dict__.pop("forward", None)

    def _capture_routing(self, module: nn.Module, args, output) -> None:
        # Read (and dropped) by the block's hook below. Set in the instance dict: nn.Module.__setattr__ checks
        # parameters, buffers and submodules on every assignment, per block per forward.
        state = self.__dict__
        state["_router_output"], state["_router_input"] = output, args[0] if args else None
        state["_fused"] = ()

    def _active_layers(self) -> list[PerftLayer]:
        # The module dict and the flags read directly, not through PEFT's properties: this runs once per block
        # per forward, and decoding a token is a forward.
        if self._disable_adapters:
            return []
        active = self._active_adapter
        layers = self.perft_layer._modules
        return [layers[a] for a in ((active,) if isinstance(active, str) else active) if a in layers]

    def _run_experts(self, forward, *args, **kwargs):
        """The block's experts module's forward (installed with the first E adapter): the frozen experts with
        the active E layers' pairs added in one grouped computation (perft_exp.adapters.fused), when the call
        is the block's own (the router's input and exact top-k output) on the grouped_mm kernel and large
        enough for the grouped path; else the experts' own forward, E then runs beside the block."""
        router_output = self._router_output
        if router_output is None or kwargs or len(args) != 3:
            return forward(*args, **kwargs)
        hidden, index, weights = args
        layers = [m for m in self._active_layers() if m.runs_in_base_experts(hidden)]
        if not layers:
            return forward(*args)
        _, top_weights, top_index = self._routing(router_output)
        experts = self._base_experts
        if not (
            _same_tensor(hidden, self._router_input)
            and index is top_index
            and weights is top_weights
            and runs_grouped_mm(experts)
        ):
            return forward(*args)
        self.__dict__["_fused"] = (layers, hidden)
        return grouped_experts_forward(experts, hidden, index, weights, layers)

    def _add(self, block: nn.Module, args, kwargs, output):
        router_output = self._router_output
        if router_output is not None:
            self.__dict__["_router_output"] = self.__dict__["_router_input"] = None
        fused, fused_input = self._fused or ((), None)
        if fused:
            self.__dict__["_fused"] = ()
        layers = self._active_layers()
        if not layers:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        x = hidden.reshape(-1, hidden.shape[-1])  # (T, D)
        if fused and not torch.compiler.is_compiling() and fused_input.data_ptr() != x.data_ptr():
            raise RuntimeError(
                f"{type(block).__name__}: its experts read another input than the block's, so E's PEFT "
                "experts cannot run inside them; set perft.impl=grouped"
            )
        routing = None if router_output is None else self._routing(router_output)
        base = output[0] if isinstance(output, tuple) else output  # tuple: blocks that return router logits
        y = base.reshape(x.shape)
        for layer in layers:  # each adds its experts' sum to the block's output
            if layer in fused:  # already in the block's output
                continue
            if routing is None and layer.needs_base_routing:
                raise RuntimeError(
                    "the base router did not run in this block's forward; cannot route the E experts"
                )
            y = layer(x, routing, residual=y)
        y = y.view_as(base)
        return (y, *output[1:]) if isinstance(output, tuple) else y

    def enable_adapters(self, enabled: bool) -> None:
        """Switch this block's PEFT experts on or off, for every adapter."""
        # Disabled, the hook skips the PEFT experts, so no gradient reaches them: only the flag changes.
        # PEFT's default also toggles requires_grad, which fails on parameters ZeRO-3 gathered under
        # inference mode.
        self._disable_adapters = not enabled

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Refused: PERFT cannot be merged into the base weights (MERGE_REFUSAL)."""
        raise ValueError(MERGE_REFUSAL)

    def unmerge(self) -> None:
        """Nothing to undo: PERFT is never merged."""
        pass


def _same_tensor(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether `a` is `b`, or (eager) a contiguous view of all of it (the block's (T, D) view of the (B, L, D)
    input its router read)."""
    if a is b:
        return True
    if b is None or torch.compiler.is_compiling():
        return False
    return (
        a.data_ptr() == b.data_ptr()
        and a.numel() == b.numel()
        and a.dtype == b.dtype
        and a.is_contiguous()
        and b.is_contiguous()
    )


def perft_tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module, PerftTunerLayer]]:
    """(block name, block, its PerftTunerLayer) for every MoE block that carries PERFT adapters."""
    return [
        (n, m, m.perft)
        for n, m in model.named_modules()
        if isinstance(getattr(m, "perft", None), PerftTunerLayer)
    ]


def block_name(name: str) -> str:
    """The base model's name of the MoE block that holds a PERFT module: `model.layers.0.mlp` for
    `base_model.model.model.layers.0.mlp.perft.perft_layer.default` or
    `base_model.model.model.layers.0.mlp`."""
    return name.removeprefix("base_model.model.").split(".perft.")[0].removesuffix(".perft")


def detach(model: nn.Module, adapter_name: str | None = None) -> None:
    """Remove one adapter (or all) from every block;
    a block left with none loses its `perft` child and hooks."""
    for _, block, layer in perft_tuner_layers(model):
        for name in [adapter_name] if adapter_name else list(layer.perft_layer):
            if name in layer.perft_layer:
                del layer.perft_layer[name]
        if not len(layer.perft_layer):
            layer.remove_hooks()
            del block.perft


class PerftModel(BaseTuner):
    """PEFT's tuner for PERFT: attaches a PerftTunerLayer to each MoE block the architecture file names."""

    prefix: str = PREFIX
    tuner_layer_cls = PerftTunerLayer
    target_module_mapping: dict = {}
    # Fold R's term into `out.aux_loss` (for TRL's GRPO/DPO, see forward). perft-exp's own trainer adds it
    # itself and turns this off: the extra output keys would also break DDP, which rebuilds the output type
    # from its keys.
    fold_aux_loss: bool = True

    def forward(self, *args, **kwargs):
        """The model's forward. In training, R's router load-balancing loss (`perft_aux_loss`) joins whichever
        loss the caller reads, weighted by the adapter's `aux_loss_coef`:

        - `out.loss`, when the model computed one (labels given): trainers that read `model(**batch).loss`
          (transformers' Trainer, TRL's SFTTrainer) train R as perft-exp's own trainer does;
        - `out.aux_loss`, the MoE load-balancing loss a model returns when asked for its router logits: TRL's
          GRPOTrainer and DPOTrainer build their loss from log-probs and add `router_aux_loss_coef x
          out.aux_loss` themselves (the model config's coefficient, TRL's default), so R's term is folded in
          as (aux_loss_coef / router_aux_loss_coef) x perft_aux_loss. The base routers' term alone stays in
          `out.base_aux_loss`. A config without a coefficient (0) leaves nothing to fold into.
        """
        out = self.model(*args, **kwargs)
        if not self.model.training:
            return out
        coef = self._own_router_coef()
        if coef is None:
            return out
        in_loss = kwargs.get("labels") is not None and getattr(out, "loss", None) is not None
        base_aux = getattr(out, "aux_loss", None)
        base_coef = getattr(self.model.config, "router_aux_loss_coef", 0.0) or 0.0
        in_aux = self.fold_aux_loss and base_aux is not None and base_coef != 0.0
        aux = adapter_aux_loss(self.model, kwargs.get("attention_mask")) if in_loss or in_aux else None
        if aux is None:
            return out
        out["perft_aux_loss"] = aux
        if in_loss:
            out.loss = out.loss + coef * aux.to(out.loss.device)
        if in_aux:
            out["base_aux_loss"] = base_aux
            out.aux_loss = base_aux + (coef / base_coef) * aux.to(base_aux.device)
        return out

    def _own_router_coef(self) -> float | None:
        """The aux-loss coefficient of the first active adapter with a learned router (R), or None.

        A plain loop: a comprehension with an assignment expression reads a closure cell, which
        torch.compile cannot trace (a graph break in every training forward)."""
        for name in self.active_adapters:
            cfg = self.peft_config.get(name)
            if cfg is not None and cfg.spec.routing is Routing.OWN:
                return cfg.aux_loss_coef
        return None

    # --- injection ------------------------------------------------------------------------------------------
    def _prepare_adapter_config(self, peft_config, model_config):
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config, key) -> bool:
        return False  # PERFT picks the MoE blocks from the architecture file, not by module-name patterns

    def _create_and_replace(self, *args, **kwargs) -> None:
        raise NotImplementedError("PERFT attaches beside MoE blocks in inject_adapter")

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict=None,
    ) -> None:
        """Attach adapter `adapter_name` beside every MoE block, its config resolved against the model and
        the base model's signature recorded; a saved adapter of another base model is refused first."""
        cfg = self.peft_config[adapter_name]
        if not isinstance(cfg, PerftPeftConfig):
            raise TypeError(f"PerftModel takes a perft_exp.PerftConfig, got {type(cfg).__name__}")
        self._check_new_adapter_config(cfg)
        config = model.config
        # A saved adapter: refuse another base model before attaching anything.
        if cfg.base_signature is not None:
            check_signature(cfg.base_signature, config)
        arch = architecture_for(model)
        cfg = cfg.resolve(arch, config)
        cfg.base_signature = base_signature(config)
        cfg.base_quantization = quantization_record(config)
        blocks = find_moe_blocks(model, arch)
        if not blocks:
            raise ValueError(
                f"variant {cfg.variant} needs MoE blocks ({arch.block_class}), but the model has none "
                "(check mlp_only_layers / decoder_sparse_step in its config)"
            )
        self.peft_config[adapter_name] = cfg
        for name, block in blocks:
            router = arch.router(block)
            layer = getattr(block, "perft", None)
            if layer is None:
                layer = PerftTunerLayer(block, router, arch)
                block.perft = layer
            layer.set_adapter(self.active_adapters)
            ref = next(router.parameters(), None)
            ref = ref if ref is not None else next(block.parameters())
            layer.update_layer(
                adapter_name, cfg, config.hidden_size, arch.top_k(config), ref.dtype, ref.device
            )
            self.targeted_module_names.append(name)
        self._mark_only_adapters_as_trainable(model)
        if cfg.inference_mode:
            for _, _, layer in perft_tuner_layers(model):
                layer.perft_layer[adapter_name].requires_grad_(False)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        pass  # the PEFT experts' dtype is the `adapter_dtype` knob (float32 by default), not PEFT's autocast

    # --- merging and unloading ------------------------------------------------------------------------------
    def _check_merge_allowed(self):
        raise ValueError(MERGE_REFUSAL)

    def merge_adapter(self, *args, **kwargs) -> None:
        """Refused: PERFT cannot be merged into the base weights (MERGE_REFUSAL)."""
        raise ValueError(MERGE_REFUSAL)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            raise ValueError(MERGE_REFUSAL)
        detach(self.model)
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    # --- checkpoint keys ------------------------------------------------------------------------------------
    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # PEFT's default removes the name only as the last or second-to-last part of a key; here it sits
        # deeper (`perft_layer.<name>.experts.A`), and a key that kept it would silently miss under another
        # adapter name.
        return key.replace(f".{PREFIX}layer.{adapter_name}.", f".{PREFIX}layer.")

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """The checkpoint's keys in the model's names, every tensor of the adapter present with its shape, and
        nothing else: otherwise one AdapterError, with the adapter taken off again (nothing half-loaded)."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        marker = f".{PREFIX}layer.{adapter_name}."
        expected = {k: v for k, v in model.state_dict().items() if marker in k}
        strip = "base_model.model."
        if not any(k.startswith(strip) for k in expected):
            remapped = {k.removeprefix(strip): v for k, v in remapped.items()}
        problem = None
        missing = sorted(set(expected) - set(remapped))
        unexpected = sorted(k for k in remapped if k not in expected)
        if missing or unexpected:
            problem = f"missing {missing[:2]}, unexpected {unexpected[:2]}"
        else:
            bad = [k for k in expected if expected[k].shape != remapped[k].shape]
            if bad:
                problem = (
                    f"{bad[0]} has shape {tuple(remapped[bad[0]].shape)}, "
                    f"expected {tuple(expected[bad[0]].shape)}"
                )
        if problem:
            detach(model, adapter_name)
            raise AdapterError(f"PERFT adapter weights do not match the model ({problem})")
        return remapped


def register() -> None:
    """Add PERFT to peft's tables (idempotent): config, tuner and key prefix under `PerftType.PERFT`."""
    peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PerftType.PERFT] = PerftPeftConfig
    peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING[PerftType.PERFT] = PerftModel
    peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PerftType.PERFT] = PREFIX


register()
