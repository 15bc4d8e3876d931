"""The variant registry: one `Variant` per `perft.variant` value, the one place that tells them apart by name.

The registry key, the `variant:` value and the YAML file name under conf/variant/ are one string. A spec holds
everything the rest of the code asks about a variant:

  family        "perft" (R, E, D, S: PEFT experts beside the frozen MoE block), "lora" (the HF PEFT
                baselines), or "none" (the frozen model, evaluated only)
  routing       how a token picks PEFT experts:   y = sum_{j in J(x)} w_j(x) expert_j(x); the classes that
                do it are the routing kinds of perft_exp/adapters/routing.py (R's top-K, or top-p when set)
                  "own"   R: a learned router W_r (N, D) picks K of the N, weights renormalised
                  "base"  E: the frozen router's top-k set S and its weights p_i,
                          one PEFT expert per FFN expert
                  "all"   D, S: every PEFT expert on, weight 1 (S is D with N = 1)
                  None    no PEFT experts (the LoRA baselines, the frozen model)
  knobs         the routing knobs a user sets (`num_experts` N, `top_k` K); they show in run names and labels
  from_model    knobs the base model decides (E: N and K are the model's); PerftConfig.resolve fills them
  fixed         knobs a variant pins (S: N = 1); `fixed_note` is the error when a user sets another value
  options       the optional knobs of KNOBS that only this variant takes
                (R: top-p routing, the authors' defect)
  tag / label   the run-name stem and the paper's figure label, format strings over the (resolved) knobs
  lora_targets  what a LoRA baseline wraps: "attention_qv", "router", "experts"
                (perft_exp/adapters/baselines.py)
  style         marker and colour in the figures (perft_exp/analysis/results/figures.py)

KNOBS are the non-routing knobs that change what a run computes and so show in its name and label when they
differ from the paper's defaults (`R-n4-k2-r16-a8`, `R (Top2/4) [alpha=8]`).
PERFT_ONLY are the keys that shape the PEFT experts alone: a LoRA baseline neither runs nor names them (its
name never shows the experts' form).

A new variant is one entry in REGISTRY and its conf/variant/<name>.yaml (plus its tests); a new knob that
shows in names and labels is one entry in KNOBS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

Family = StrEnum("Family", {"PERFT": "perft", "LORA": "lora", "NONE": "none"})
Routing = StrEnum("Routing", {"OWN": "own", "BASE": "base", "ALL": "all"})


@dataclass(frozen=True)
class Variant:
    """One value of `perft.variant` and what the code asks about it (the module docstring has the fields)."""

    name: str
    family: Family
    summary: str
    tag: str  # format string over the perft knobs; the bottleneck and KNOBS follow (not for the frozen model)
    label: str  # format string over the perft knobs; a knob it needs that is unknown gives the bare name
    routing: Routing | None = None
    knobs: tuple[str, ...] = ()
    from_model: tuple[str, ...] = ()
    fixed: Mapping[str, int | None] = field(default_factory=dict)
    fixed_note: str = ""
    options: tuple[str, ...] = ()
    lora_targets: tuple[str, ...] = ()
    style: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_perft(self) -> bool:
        """R, E, D, S: PEFT experts beside the frozen MoE block."""
        return self.family is Family.PERFT

    @property
    def routed(self) -> bool:
        """A token uses a subset of the PEFT experts (R, E): routing statistics and load exist."""
        return self.routing in (Routing.OWN, Routing.BASE)

    @property
    def uses_base_routing(self) -> bool:
        """E: the PEFT experts are routed by the frozen router."""
        return self.routing is Routing.BASE

    @property
    def legend(self) -> str:
        """The family's name in figure legends: `PERFT-R`, `qv-LoRA`."""
        return f"PERFT-{self.name}" if self.is_perft else self.label

    def routing_numbers(self, perft: Mapping) -> tuple[int | None, int | None]:
        """(N, K): PEFT experts per layer and how many a token uses
        (E: the model's, once resolved; D: all N)."""
        if self.routed:
            return perft.get("num_experts"), perft.get("top_k")
        if self.routing is Routing.ALL:
            return perft.get("num_experts"), perft.get("num_experts")
        return None, None

    def run_tag(self, perft: Mapping) -> str:
        """`R-n4-k2-r16`, `E-r16`, `qv_lora-r16`, `none`: only knobs that differ from the paper's defaults."""
        if self.family is Family.NONE:
            return self.name
        parts = [self.tag.format(**perft), f"r{perft['bottleneck']}"]
        return "-".join(parts + [k.tag(perft) for k in self.knobs_set(perft)])

    def knobs_set(self, perft: Mapping) -> list[Knob]:
        """The KNOBS that this variant takes and that differ from the paper's defaults in `perft`."""
        if self.family is Family.NONE:
            return []
        return [k for k in KNOBS if self.takes(k.key) and k.is_set(perft)]

    def takes(self, key: str) -> bool:
        """Whether `perft.<key>` can change what this variant runs:
        PERFT_ONLY keys only for PERFT variants."""
        return self.family is Family.PERFT or key not in PERFT_ONLY

    def display_name(self, perft: Mapping) -> str:
        """The paper's figure label: `R (Top2/4)`, `E (Top8/64)`, `D (4)`,
        `S (1)`, `qv-LoRA`, `base model`."""
        needed = [k for k in ("num_experts", "top_k") if "{" + k in self.label]
        label = self.name if any(perft.get(k) is None for k in needed) else self.label.format(**perft)
        return label + _knob_labels(perft, self.knobs_set(perft))


@dataclass(frozen=True)
class Knob:
    """A knob shown in run names and labels when it differs from the paper's default
    (for a variant that takes it)."""

    key: str
    is_set: Callable[[Mapping], bool]
    tag: Callable[[Mapping], str]
    label: Callable[[Mapping], str]


def _knob_labels(perft: Mapping, knobs: list[Knob] | None = None) -> str:
    """` [alpha=8, adapter]`: the knobs that differ from the paper's defaults
    (of KNOBS unless given), for a label."""
    labels = [k.label(perft) for k in (knobs if knobs is not None else KNOBS) if k.is_set(perft)]
    return f" [{', '.join(labels)}]" if labels else ""


def _alpha_set(p: Mapping) -> bool:
    return p.get("alpha") is not None and bool(p.get("bottleneck")) and p["alpha"] != 2 * p["bottleneck"]


KNOBS = (
    Knob(
        "top_p",
        lambda p: p.get("top_p") is not None,
        lambda p: f"p{p['top_p']:g}",
        lambda p: f"top-p={p['top_p']:g}",
    ),
    Knob("alpha", _alpha_set, lambda p: f"a{p['alpha']:g}", lambda p: f"alpha={p['alpha']:g}"),
    Knob("form", lambda p: p.get("form", "lora") != "lora", lambda p: p["form"], lambda p: p["form"]),
    Knob(
        "init",
        lambda p: p.get("init", "paper") != "paper",
        lambda p: p["init"],
        lambda p: f"init={p['init']}",
    ),
    Knob(
        "authors_weighting_defect",
        lambda p: bool(p.get("authors_weighting_defect")),
        lambda p: "defect",
        lambda p: "authors' defect",
    ),
    Knob(
        "dropout_scope",
        lambda p: p.get("dropout_scope", "expert") != "expert",
        lambda p: f"drop_{p['dropout_scope']}",
        lambda p: f"{p['dropout_scope']} dropout",
    ),
    Knob(
        "router_init",
        lambda p: p.get("router_init", "linear") != "linear",
        lambda p: f"rinit_{p['router_init']}",
        lambda p: f"router init={p['router_init']}",
    ),
    Knob(
        "router_dtype",
        lambda p: p.get("router_dtype", "float32") != "float32",
        lambda p: f"rdtype_{p['router_dtype']}",
        lambda p: f"router dtype={p['router_dtype']}",
    ),
)
# The perft keys that shape the PEFT experts only. The LoRA baselines are HF PEFT's LoRA (rank, alpha,
# dropout) and the frozen model has no adapter: these do not apply to them, so their names leave them out and
# PerftConfig resets them (adapters/config.py).
PERFT_ONLY = (
    "form",
    "activation",
    "init",
    "dropout_scope",
    "router_init",
    "router_dtype",
    "impl",
    "adapter_dtype",
)
# The knobs a run name shows (the routing knobs, the bottleneck, KNOBS): with the model, task and seed they
# are what a run name's hash of the remaining config changes is taken against (perft_exp/config.py).
TAG_KNOBS = ("num_experts", "top_k", "bottleneck", *(k.key for k in KNOBS))

_LORA = dict(tag="{variant}", routing=None, family=Family.LORA)
REGISTRY: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "R",
            Family.PERFT,
            "routed: N PEFT experts with their own learned router, top-K, renormalised",
            tag="R-n{num_experts}-k{top_k}",
            label="R (Top{top_k}/{num_experts})",
            routing=Routing.OWN,
            knobs=("num_experts", "top_k"),
            options=("top_p", "authors_weighting_defect"),
            style=dict(marker="o", color="tab:red"),
        ),
        Variant(
            "E",
            Family.PERFT,
            "embedded: one PEFT expert per FFN expert, routed by the frozen router",
            tag="E",
            label="E (Top{top_k}/{num_experts})",
            routing=Routing.BASE,
            from_model=("num_experts", "top_k"),
            style=dict(marker="^", color="tab:blue"),
        ),
        Variant(
            "D",
            Family.PERFT,
            "shared, several: N always-on PEFT experts, summed",
            tag="D-n{num_experts}",
            label="D ({num_experts})",
            routing=Routing.ALL,
            knobs=("num_experts",),
            fixed={"top_k": None},
            style=dict(marker="s", color="tab:green"),
        ),
        Variant(
            "S",
            Family.PERFT,
            "shared, single: one always-on PEFT expert",
            tag="S",
            label="S (1)",
            routing=Routing.ALL,
            fixed={"num_experts": 1, "top_k": None},
            fixed_note="S has one expert (use D)",
            style=dict(marker="D", color="tab:purple"),
        ),
        Variant(
            "qv_lora",
            summary="LoRA on attention q_proj, v_proj (the MoE-agnostic baseline)",
            label="qv-LoRA",
            lora_targets=("attention_qv",),
            style=dict(marker=".", color="tab:gray"),
            **_LORA,
        ),
        Variant(
            "router_lora",
            summary="LoRA on the frozen router's weight only",
            label="router-LoRA",
            lora_targets=("router",),
            style=dict(marker="x", color="tab:olive"),
            **_LORA,
        ),
        Variant(
            "expert_lora",
            summary="LoRA on every FFN expert's fused 3-D weights",
            label="expert-LoRA",
            lora_targets=("experts",),
            style=dict(marker="+", color="tab:brown"),
            **_LORA,
        ),
        Variant(
            "router_expert_lora",
            summary="LoRA on the router and the experts",
            label="router+expert-LoRA",
            lora_targets=("router", "experts"),
            style=dict(marker="*", color="tab:cyan"),
            **_LORA,
        ),
        Variant(
            "none", Family.NONE, "no adapter: evaluate the frozen base model", tag="none", label="base model"
        ),
    )
}
VARIANTS = tuple(REGISTRY)
PERFT_VARIANTS = tuple(n for n, v in REGISTRY.items() if v.is_perft)
LORA_BASELINES = tuple(n for n, v in REGISTRY.items() if v.family is Family.LORA)
# Tables and figures: the frozen model, the baselines, then PERFT (registry order within each).
FIGURE_ORDER = tuple(
    sorted(REGISTRY, key=lambda n: (Family.NONE, Family.LORA, Family.PERFT).index(REGISTRY[n].family))
)


def get_variant(name: str) -> Variant:
    """The spec of `perft.variant=name` (ValueError naming the choices)."""
    if name not in REGISTRY:
        raise ValueError(f"perft.variant={name!r} is not allowed; choose one of {', '.join(VARIANTS)}")
    return REGISTRY[name]


def variant_label(perft: Mapping, base_top_k: int | None = None, base_experts: int | None = None) -> str:
    """The paper's label from a `perft` mapping (a run's results, a PerftConfig's dict, a sweep job). E names
    the base model's routing: a resolved config holds it; an older unresolved one takes `base_top_k`,
    `base_experts`."""
    spec = REGISTRY.get(perft["variant"])
    if spec is None:  # a run of a variant this version does not know: its name
        return perft["variant"] + _knob_labels(perft)
    known = {"top_k": base_top_k, "num_experts": base_experts}
    filled = {**perft, **{k: known[k] for k in spec.from_model if perft.get(k) is None}}
    return spec.display_name(filled)


def run_label(perft: Mapping, base_top_k: int | None = None, base_experts: int | None = None) -> str:
    """The label of one run (console table, W&B, count_params):
    `R (Top2/4) r16`, `qv-LoRA r8`, `base model`."""
    label = variant_label(perft, base_top_k, base_experts)
    return label if get_variant(perft["variant"]).family is Family.NONE else f"{label} r{perft['bottleneck']}"
