"""`PerftConfig`: what to attach to a frozen MoE model, validated on construction.

Field names equal the Hydra keys under `perft.` and the paper's names:
`num_experts` (N), `top_k` (K), `bottleneck` (r, the paper's D_B), `alpha` (LoRA scale numerator).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from perft_exp.adapters.variants import (
    KNOBS,
    REGISTRY,
    Family,
    Variant,
    get_variant,
    run_label,
    variant_label,
)

FORMS = ("lora", "adapter")
INITS = ("paper", "zero_b")
IMPLS = ("auto", "dense", "grouped", "loop")
ADAPTER_DTYPES = ("float32", "bfloat16", "model")


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(
            f"perft.{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}"
        )


@dataclass
class PerftConfig:
    variant: str = "R"
    num_experts: int | None = 4  # N; for E it is the model's expert count (leave None)
    top_k: int | None = 2  # K; R only (E uses the model's k)
    bottleneck: int = 16  # r; also the rank of the LoRA baselines
    alpha: float | None = None  # None -> 2 * bottleneck, as in every paper run
    dropout: float = 0.05
    form: str = "lora"  # "lora": (alpha/r) B A dropout(x); "adapter": W_up act(W_down x)
    activation: str = "silu"  # adapter form only
    init: str = "paper"  # "paper": A ~ N(0, 2/r), B ~ N(0, 1e-12); "zero_b": B = 0 (no-op at step 0)
    aux_loss_coef: float | None = None  # R's router aux loss; None -> the architecture's default
    # The authors' OLMoE code scaled R's j-th chosen PEFT expert by the j-th largest *base-router*
    # weight, so W_r learned from the aux loss alone. Off by default; on only to compare with them.
    authors_weighting_defect: bool = False
    impl: str = "auto"  # routed compute: dense masked, grouped matmul over chosen experts, or loop
    adapter_dtype: str = "float32"  # dtype of the PEFT parameters ("model": same as the base)

    def __post_init__(self) -> None:
        spec = get_variant(self.variant)
        _one_of("form", self.form, FORMS)
        _one_of("init", self.init, INITS)
        _one_of("impl", self.impl, IMPLS)
        _one_of("adapter_dtype", self.adapter_dtype, ADAPTER_DTYPES)
        if spec.family is Family.NONE:
            return
        if not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f"perft.bottleneck={self.bottleneck!r} must be an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"perft.dropout={self.dropout!r} must be in [0, 1)")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"perft.alpha={self.alpha!r} must be > 0")
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
                f"perft.top_k={self.top_k} > perft.num_experts={self.num_experts}; top_k must be in [1, num_experts]"
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
        return self.alpha if self.alpha is not None else 2.0 * self.bottleneck

    @property
    def spec(self) -> Variant:
        """The variant's registry entry (perft_exp/adapters/variants.py)."""
        return get_variant(self.variant)

    @property
    def is_perft(self) -> bool:
        return self.spec.is_perft

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PerftConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown perft keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def display_name(self, base_top_k: int | None = None, base_experts: int | None = None) -> str:
        """The paper's figure label: `R (Top2/4)`, `E (Top8/64)`, `D (4)`, `S (1)`, `qv-LoRA`, `base model`."""
        return variant_label(self.to_dict(), base_top_k, base_experts)

    def run_label(self, base_top_k: int | None = None, base_experts: int | None = None) -> str:
        """The label of one run (console table, W&B, count_params): `R (Top2/4) r16`, `qv-LoRA r8`."""
        return run_label(self.to_dict(), base_top_k, base_experts)
