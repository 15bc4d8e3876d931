"""`PerftConfig`: what to attach to a frozen MoE model, validated on construction.

Field names equal the Hydra keys under `perft.` and the paper's names:
`num_experts` (N), `top_k` (K), `bottleneck` (r, the paper's D_B), `alpha` (LoRA scale numerator).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PERFT_VARIANTS = ("R", "E", "D", "S")
LORA_BASELINES = ("qv_lora", "router_lora", "expert_lora", "router_expert_lora")
VARIANTS = (*PERFT_VARIANTS, *LORA_BASELINES, "none")
FORMS = ("lora", "adapter")
INITS = ("paper", "zero_b")
IMPLS = ("auto", "dense", "grouped", "loop")
ADAPTER_DTYPES = ("float32", "bfloat16", "model")
DROPOUT_SCOPES = ("expert", "shared")
ROUTER_INITS = ("linear", "authors")
ROUTER_DTYPES = ("float32", "model")


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
    # expert: each PEFT expert draws its own mask, where the authors apply it (LoRA: on its input; adapter: after
    # W_down); shared: one mask on x for all experts. The LoRA baselines use HF PEFT's dropout either way.
    dropout_scope: str = "expert"
    form: str = "lora"  # "lora": (alpha/r) B A dropout(x); "adapter": W_up act(W_down x)
    activation: str = "silu"  # adapter form only
    init: str = "paper"  # "paper": A ~ N(0, 2/r), B ~ N(0, 1e-12); "zero_b": B = 0 (no-op at step 0)
    aux_loss_coef: float | None = None  # R's router aux loss; None -> the architecture's default
    # The authors' OLMoE code scaled R's j-th chosen PEFT expert by the j-th largest *base-router*
    # weight, so W_r learned from the aux loss alone. Off by default; on only to compare with them.
    authors_weighting_defect: bool = False
    # R's router W_r: "linear" = nn.Linear's U(-1/sqrt(D), 1/sqrt(D)) in fp32 (ours); the authors' router was made
    # by from_pretrained: the model's _init_weights N(0, 0.02), in the model's dtype (bf16), never re-initialised.
    router_init: str = "linear"
    router_dtype: str = "float32"  # "model": the base model's dtype (bf16 on GPU), as the authors ran it
    impl: str = "auto"  # routed compute: dense masked, grouped matmul over chosen experts, or loop
    adapter_dtype: str = "float32"  # dtype of the PEFT parameters ("model": same as the base)

    def __post_init__(self) -> None:
        _one_of("variant", self.variant, VARIANTS)
        _one_of("form", self.form, FORMS)
        _one_of("init", self.init, INITS)
        _one_of("impl", self.impl, IMPLS)
        _one_of("adapter_dtype", self.adapter_dtype, ADAPTER_DTYPES)
        _one_of("dropout_scope", self.dropout_scope, DROPOUT_SCOPES)
        _one_of("router_init", self.router_init, ROUTER_INITS)
        _one_of("router_dtype", self.router_dtype, ROUTER_DTYPES)
        if self.variant == "none":
            return
        if not isinstance(self.bottleneck, int) or self.bottleneck < 1:
            raise ValueError(f"perft.bottleneck={self.bottleneck!r} must be an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"perft.dropout={self.dropout!r} must be in [0, 1)")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"perft.alpha={self.alpha!r} must be > 0")
        if self.aux_loss_coef is not None and self.aux_loss_coef < 0:
            raise ValueError(f"perft.aux_loss_coef={self.aux_loss_coef!r} must be >= 0")
        if self.variant == "S":
            if self.num_experts not in (None, 1):
                raise ValueError(
                    f"perft.num_experts={self.num_experts} with variant S; S has one expert (use D)"
                )
            self.num_experts, self.top_k = 1, None
        elif self.variant == "D":
            self._check_count("num_experts", self.num_experts)
            self.top_k = None
        elif self.variant == "R":
            self._check_count("num_experts", self.num_experts)
            self._check_count("top_k", self.top_k)
            if self.top_k > self.num_experts:
                raise ValueError(
                    f"perft.top_k={self.top_k} > perft.num_experts={self.num_experts}; top_k must be in [1, num_experts]"
                )
        elif self.variant == "E":
            overridden = [
                f"perft.{k}={getattr(self, k)}"
                for k in ("num_experts", "top_k")
                if getattr(self, k) is not None
            ]
            if overridden:
                raise ValueError(
                    f"variant E takes its expert count and top-k from the model's router; remove {', '.join(overridden)}"
                )
        if self.authors_weighting_defect and self.variant != "R":
            raise ValueError("perft.authors_weighting_defect applies to variant R only")

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
    def is_perft(self) -> bool:
        return self.variant in PERFT_VARIANTS

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
        label = self.display_name(base_top_k, base_experts)
        return label if self.variant == "none" else f"{label} r{self.bottleneck}"


BASELINE_LABELS = {
    "qv_lora": "qv-LoRA",
    "router_lora": "router-LoRA",
    "expert_lora": "expert-LoRA",
    "router_expert_lora": "router+expert-LoRA",
    "none": "base model",
}


def _knob_suffix(perft: dict) -> str:
    """Non-default knobs that change what a label means (the paper's runs all use the defaults)."""
    r = perft.get("bottleneck")
    knobs = []
    if perft.get("alpha") is not None and r and perft["alpha"] != 2 * r:
        knobs.append(f"alpha={perft['alpha']:g}")
    if perft.get("form", "lora") != "lora":
        knobs.append(perft["form"])
    if perft.get("init", "paper") != "paper":
        knobs.append(f"init={perft['init']}")
    if perft.get("authors_weighting_defect"):
        knobs.append("authors' defect")
    return f" [{', '.join(knobs)}]" if knobs else ""


def variant_label(perft: dict, base_top_k: int | None = None, base_experts: int | None = None) -> str:
    """The one owner of config labels, from a `perft` mapping (results.json's or a PerftConfig's);
    E names the base model's routing, so it needs the base model's top-k and expert count."""
    v = perft["variant"]
    if v == "R":
        label = f"R (Top{perft['top_k']}/{perft['num_experts']})"
    elif v == "E":
        label = f"E (Top{base_top_k}/{base_experts})" if base_top_k and base_experts else "E"
    elif v == "D":
        label = f"D ({perft['num_experts']})"
    elif v == "S":
        label = "S (1)"
    else:
        label = BASELINE_LABELS.get(v, v)
    return label + _knob_suffix(perft)
