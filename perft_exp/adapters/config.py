"""`PerftConfig`: what to attach to a frozen MoE model, validated on construction, resolved against the model.

Field names equal the Hydra keys under `perft.` and the paper's names:
`num_experts` (N), `top_k` (K), `bottleneck` (r, the paper's D_B), `alpha` (LoRA scale numerator).

Two states of one object. As composed, a config holds what the user chose: E's N and K are null (the base
model decides them) and `aux_loss_coef` may be null (the architecture decides it).
`resolve(arch, model_config)` fills those model-dependent defaults once, when the base model is known
(apply_adapters does it), so the object that is built is the object that is saved: the run's results, its
adapter_config.json, its run label and W&B config all read the resolved values (`E (Top8/64)`, aux_loss_coef
0.01), never a null to fill in again. What each variant takes from the user, from the model, or pins is its
registry entry (adapters/variants.py).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from perft_exp.adapters.variants import (
    KNOBS,
    REGISTRY,
    Family,
    Routing,
    Variant,
    get_variant,
    run_label,
    variant_label,
)
from perft_exp.checks import one_of

if TYPE_CHECKING:
    from perft_exp.models.arch import MoEArchitecture

FORMS = ("lora", "adapter")
INITS = ("paper", "zero_b")
IMPLS = ("auto", "dense", "grouped", "fused", "gather", "select", "loop")
ADAPTER_DTYPES = ("float32", "bfloat16", "model")
DROPOUT_SCOPES = ("expert", "shared")
ROUTER_INITS = ("linear", "authors")
ROUTER_DTYPES = ("float32", "model")


@dataclass
class PerftConfig:
    """What to attach, one field per Hydra key under `perft.`; as composed or resolved (module docstring)."""

    variant: str = field(
        default="R",
        metadata={"help": "R, E, D, S (PERFT) or a LoRA baseline (qv_lora, ...), or none (the frozen model)"},
    )
    num_experts: int | None = field(
        default=4, metadata={"help": "N, the PEFT experts per MoE block (E: null, the model's expert count)"}
    )
    top_k: int | None = field(
        default=2, metadata={"help": "K, the PEFT experts each token takes (R only; E: null, the model's k)"}
    )
    top_p: float | None = field(
        default=None,
        metadata={
            "help": "R only, null (off) in the paper: each token takes the fewest of its top-K PEFT experts "
            "whose router probabilities sum to >= top_p, weights renormalised over them"
        },
    )
    bottleneck: int = field(
        default=16, metadata={"help": "r, each PEFT expert's bottleneck (the paper's D_B); the LoRA rank"}
    )
    alpha: float | None = field(
        default=None, metadata={"help": "LoRA scale numerator (scale alpha / r); null: 2 x bottleneck"}
    )
    dropout: float = field(default=0.05, metadata={"help": "dropout on the PEFT experts' path, in [0, 1)"})
    dropout_scope: str = field(
        default="expert",
        metadata={
            "help": "expert: each PEFT expert draws its own mask (LoRA form: on its input; adapter form: "
            "after W_down); shared: one mask on x for all experts. The LoRA baselines use PEFT's own dropout"
        },
    )
    form: str = field(
        default="lora",
        metadata={"help": "lora: (alpha / r) B A dropout(x); adapter: W_up act(W_down x)"},
    )
    activation: str = field(default="silu", metadata={"help": "the adapter form's activation"})
    init: str = field(
        default="paper",
        metadata={"help": "paper: A ~ N(0, 2 / r), B ~ N(0, 1e-12); zero_b: B = 0 (no change at step 0)"},
    )
    aux_loss_coef: float | None = field(
        default=None, metadata={"help": "weight of R's router load-balancing loss; null: the architecture's"}
    )
    authors_weighting_defect: bool = field(
        default=False,
        metadata={
            "help": "R only, for comparison with the authors' OLMoE code: the j-th chosen PEFT expert is "
            "weighted by the frozen router's j-th largest weight (docs/protocol.md)"
        },
    )
    router_init: str = field(
        default="linear",
        metadata={
            "help": "R's router init. linear: nn.Linear's uniform init, fp32; authors: N(0, 0.02) in the "
            "model's dtype, as in the authors' runs (docs/protocol.md)"
        },
    )
    router_dtype: str = field(
        default="float32", metadata={"help": "R's router dtype: float32, or model (the base model's)"}
    )
    impl: str = field(
        default="auto",
        metadata={
            "help": "the routed experts' compute: auto (by the pairs per call), dense (masked), grouped "
            "(matmul), fused (E: grouped inside the frozen experts' computation), gather (row sums), select "
            "(copied pairs), loop"
        },
    )
    adapter_dtype: str = field(
        default="float32",
        metadata={"help": "dtype of the PEFT parameters: float32, bfloat16, or model (the base's)"},
    )

    def __post_init__(self) -> None:
        spec = get_variant(self.variant)
        for key, allowed in (
            ("form", FORMS),
            ("init", INITS),
            ("impl", IMPLS),
            ("adapter_dtype", ADAPTER_DTYPES),
            ("dropout_scope", DROPOUT_SCOPES),
            ("router_init", ROUTER_INITS),
            ("router_dtype", ROUTER_DTYPES),
        ):
            one_of(f"perft.{key}", getattr(self, key), allowed)
        # A LoRA baseline (HF PEFT's LoRA: rank, alpha, dropout) or the frozen model does not take the PEFT
        # experts' form, init, ...; a model config may set them for PERFT (the tiny models' adapter form):
        # back to the defaults, so the saved config, name and label say what ran.
        for key, value in applicable(self.to_dict()).items():
            setattr(self, key, value)
        if spec.family is Family.NONE:
            return
        if not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f"perft.bottleneck={self.bottleneck!r} must be an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"perft.dropout={self.dropout!r} must be in [0, 1)")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"perft.alpha={self.alpha!r} must be > 0")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"perft.top_p={self.top_p!r} must be in (0, 1] (or null: top-K)")
        if self.impl == "fused" and spec.routing is not Routing.BASE:
            raise ValueError(
                f"perft.impl=fused runs E's PEFT experts inside the frozen experts' computation; variant "
                f"{self.variant} has experts of its own (use grouped)"
            )
        if self.top_p is not None and self.authors_weighting_defect:
            raise ValueError("perft.top_p and perft.authors_weighting_defect do not combine")
        if self.aux_loss_coef is not None and self.aux_loss_coef < 0:
            raise ValueError(f"perft.aux_loss_coef={self.aux_loss_coef!r} must be >= 0")
        for key, value in spec.fixed.items():
            if value is not None and getattr(self, key) not in (None, value):
                raise ValueError(
                    f"perft.{key}={getattr(self, key)} with variant {self.variant}; {spec.fixed_note}"
                )
            setattr(self, key, value)
        for key in spec.knobs:
            self._check_count(key, getattr(self, key))
        if "top_k" in spec.knobs and self.top_k > self.num_experts:
            raise ValueError(
                f"perft.top_k={self.top_k} > perft.num_experts={self.num_experts}; "
                "top_k must be in [1, num_experts]"
            )
        overridden = [
            f"perft.{k}={getattr(self, k)}" for k in spec.from_model if getattr(self, k) is not None
        ]
        if overridden:
            raise ValueError(
                f"variant {self.variant} takes its expert count and top-k from the model's router; "
                f"remove {', '.join(overridden)}"
            )
        for knob in KNOBS:
            owners = [name for name, v in REGISTRY.items() if knob.key in v.options]
            if owners and knob.key not in spec.options and knob.is_set(self.to_dict()):
                raise ValueError(f"perft.{knob.key} applies to variant {', '.join(owners)} only")

    @staticmethod
    def _check_count(key: str, value) -> None:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"perft.{key}={value!r} must be an integer >= 1")

    @property
    def scaling(self) -> float:
        """LoRA scale alpha / r (1.0 for the adapter form, which has no scaling)."""
        if self.form == "adapter":
            return 1.0
        return (self.alpha if self.alpha is not None else 2.0 * self.bottleneck) / self.bottleneck

    @property
    def lora_alpha(self) -> float:
        """LoRA's alpha: `alpha`, or 2 r when it is unset."""
        return self.alpha if self.alpha is not None else 2.0 * self.bottleneck

    @property
    def spec(self) -> Variant:
        """The variant's registry entry (perft_exp/adapters/variants.py)."""
        return get_variant(self.variant)

    @property
    def is_perft(self) -> bool:
        """Whether the variant is PERFT (R, E, D, S), not a LoRA baseline or the frozen model."""
        return self.spec.is_perft

    def to_dict(self) -> dict:
        """The knobs as a plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PerftConfig:
        """A config from its dict, resolved or not (an adapter_config.json's `perft`, a run's results')."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown perft keys: {sorted(unknown)}; known: {sorted(known)}")
        from_model = {
            k: d[k] for k in get_variant(d.get("variant", cls.variant)).from_model if d.get(k) is not None
        }
        cfg = cls(**{**d, **dict.fromkeys(from_model)})
        for key, value in from_model.items():  # resolved values: the base model's, already checked against it
            setattr(cfg, key, value)
        return cfg

    def resolve(self, arch: MoEArchitecture, model_config) -> PerftConfig:
        """A copy with the model-dependent defaults filled in: the knobs the variant takes from the model (E's
        N and K: the model's expert count and top-k) and a null aux_loss_coef (the architecture's).
        Idempotent."""
        out = copy.copy(self)
        for key in self.spec.from_model:
            # arch.num_experts(config), arch.top_k(config)
            setattr(out, key, getattr(arch, key)(model_config))
        if out.aux_loss_coef is None:
            out.aux_loss_coef = arch.adapter_aux_loss_coef
        return out

    def display_name(self, base_top_k: int | None = None, base_experts: int | None = None) -> str:
        """The paper's figure label: `R (Top2/4)`, `E (Top8/64)`, `D (4)`,
        `S (1)`, `qv-LoRA`, `base model`."""
        return variant_label(self.to_dict(), base_top_k, base_experts)

    def run_label(self, base_top_k: int | None = None, base_experts: int | None = None) -> str:
        """The label of one run (console table, W&B, count_params): `R (Top2/4) r16`, `qv-LoRA r8`."""
        return run_label(self.to_dict(), base_top_k, base_experts)


_DEFAULTS = {f.name: f.default for f in fields(PerftConfig)}


def applicable(perft: Mapping) -> dict:
    """`perft` (a dict of PerftConfig's keys, some or all) as its variant runs it: the keys the variant does
    not take (`Variant.takes`: PERFT_ONLY, for a LoRA baseline or the frozen model) at their defaults. A run
    directory compares configs through it, so `variant=qv_lora` on a model that sets the adapter form and
    `variant=qv_lora perft.form=lora` are one run."""
    out = dict(perft)
    spec = REGISTRY.get(out.get("variant"))
    if spec is not None:
        out.update({k: _DEFAULTS[k] for k in out if k in _DEFAULTS and not spec.takes(k)})
    return out
