"""Routing statistics of PERFT layers, live: expert loads and router entropy (a Trainer callback),
router angles.

    with track_routing(model) as stats:          # hooks on every PERFT layer that routes (R, E)
        model(**batch)
    stats.per_layer()   # [{layer, name, variant, num_experts, top_k, tokens, load, load_entropy, ...}]
    stats.metrics()     # flat {"eval/routing/layer0/load_entropy": ...} for W&B (perft_exp/metric_schema.py)
    RoutingStatsCallback(trainer.log)            # the same for every evaluation of a training run

    principal_angles(W_r, W_g)        # degrees between the row spaces of two (n, D) matrices
    router_angles(model)              # per layer: R's learned router W_r against the frozen router W_g

Definitions (perft_exp/analysis/routing.py and scripts/analyze_routing.py build figures and tables from them):
- Load of a layer: how many (token, chosen PEFT expert) pairs each of its N experts got; it sums to
  tokens * K for a fixed top-K, less where the routing kind takes fewer for some tokens (top-p: masked slots
  are not counted). Padding is excluded: a forward pre-hook on the model reads the `attention_mask` keyword
  argument (HF forward and generate pass it by keyword); a call without one counts every position.
  Under generation with a KV cache the mask's last S columns belong to the S new positions.
- experts_per_token: the load's sum divided by the tokens, the mean number of PEFT experts a token used;
  activated_fraction divides it by N (measured, where counting takes the routing kind's bound K / N).
- load_entropy: entropy of the load distribution divided by log N (1 = perfectly balanced, 0 = collapsed).
- router_entropy (R only): mean over tokens of the entropy, in nats, of q = softmax(W_r x) over N experts;
  router_entropy_norm divides it by log N.
- Principal angles between the row spaces of W_r (N, D) and W_g (E, D): theta_i = arccos sigma_i(Qa Qb^T) for
  orthonormal row bases Qa, Qb; 0 = W_r routes along directions W_g already uses, 90 = orthogonal.
Statistics are per process (no all-reduce under data parallelism).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import TrainerCallback

from perft_exp import metric_schema as schema
from perft_exp.adapters.layer import PerftLayer
from perft_exp.adapters.tuner import block_name, perft_tuner_layers
from perft_exp.adapters.variants import Routing, get_variant
from perft_exp.models.arch import architecture_for


def _layer_index(name: str, fallback: int) -> int:
    match = re.search(r"layers\.(\d+)\.", name + ".")
    return int(match.group(1)) if match else fallback


def _normalised_entropy(counts: torch.Tensor) -> float:
    n = counts.numel()
    total = float(counts.sum())
    if n <= 1 or total == 0:
        return 1.0 if n == 1 else float("nan")
    p = counts.double() / total
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h / math.log(n))


@dataclass
class LayerRouting:
    """Running sums of one PERFT layer's routing (tensors on the layer's device: no host syncs)."""

    name: str
    layer: int
    variant: str
    num_experts: int
    top_k: int
    load: torch.Tensor  # (N,) assignments per PEFT expert
    tokens: torch.Tensor  # () non-padding tokens seen
    entropy_sum: torch.Tensor  # () sum over tokens of the router entropy (R only)

    def as_dict(self) -> dict:
        """The layer's statistics as plain numbers (the module docstring defines them)."""
        tokens = int(self.tokens)
        load = [int(c) for c in self.load.tolist()]
        out = {
            "layer": self.layer,
            "name": self.name,
            "variant": self.variant,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "tokens": tokens,
            "load": load,
            "experts_per_token": sum(load) / tokens if tokens else float("nan"),
            "activated_fraction": sum(load) / (tokens * self.num_experts) if tokens else float("nan"),
            "load_entropy": _normalised_entropy(self.load),
            # 1 = balanced; N = every assignment on one expert
            "max_load_ratio": max(load) * self.num_experts / sum(load) if sum(load) else float("nan"),
            "router_entropy": None,
            "router_entropy_norm": None,
        }
        if get_variant(self.variant).routing is Routing.OWN and tokens:
            h = float(self.entropy_sum) / tokens
            out["router_entropy"] = h
            out["router_entropy_norm"] = h / math.log(self.num_experts) if self.num_experts > 1 else 0.0
        return out


@dataclass
class RoutingStats:
    """The running sums of every routed PERFT layer, filled by track_routing."""

    layers: list[LayerRouting] = field(default_factory=list)
    padding_masked: bool = True  # False once a forward ran without an attention mask

    def per_layer(self) -> list[dict]:
        """One dict of statistics per tracked layer (LayerRouting.as_dict)."""
        return [layer.as_dict() for layer in self.layers]

    def summary(self) -> dict:
        """The activated fraction measured on the data seen, for a run's results: PEFT experts per token and
        their fraction of N, means over layers, with the per-layer rows."""
        rows = self.per_layer()
        counted = [row for row in rows if row["tokens"]]
        mean = {
            key: sum(row[key] for row in counted) / len(counted) if counted else None
            for key in ("experts_per_token", "activated_fraction")
        }
        return {**mean, "layers": rows}

    def metrics(self, prefix: str = schema.ROUTING) -> dict[str, float]:
        """Flat scalars for a logger (names from perft_exp/metric_schema.py): per layer, each PEFT
        expert's share of the layer's assignments, and the means over layers."""
        out: dict[str, float] = {}
        rows = self.per_layer()
        for row in rows:
            for key in schema.ROUTING_STATS:
                if row[key] is not None:
                    out[schema.routing_key(row["layer"], key, prefix)] = row[key]
            total = sum(row["load"])
            for expert, count in enumerate(row["load"]) if total else ():
                out[schema.load_share_key(row["layer"], expert, prefix)] = count / total
        for key in schema.ROUTING_STATS:
            values = [row[key] for row in rows if row[key] is not None and not math.isnan(row[key])]
            if values:
                out[schema.routing_key("mean", key, prefix)] = sum(values) / len(values)
        return out


def _token_mask(mask: torch.Tensor | None, num_tokens: int) -> torch.Tensor | None:
    """The (T,) keep-mask of a layer's flattened (B*S) tokens from the model's (B, L) attention mask."""
    if mask is None or mask.dim() != 2 or num_tokens % mask.shape[0]:
        return None
    seq = num_tokens // mask.shape[0]
    if mask.shape[1] < seq:
        return None
    return mask[:, -seq:].reshape(-1).bool()


@contextmanager
def track_routing(model: nn.Module, when: Callable[[], bool] | None = None) -> Iterator[RoutingStats]:
    """Accumulate per-layer PEFT-expert loads (and R's router entropy) over the forwards inside the block.

    Only reads: forward hooks are removed on exit and no module state is changed. Layers that do not
    route (D, S) are not tracked; a model without PERFT layers yields empty stats. `when`: count only the
    forwards during which it returns True (RoutingStatsCallback: eval mode).
    """
    stats = RoutingStats()
    handles = []
    current: dict[str, torch.Tensor | None] = {"mask": None}

    def capture_mask(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        current["mask"] = mask if isinstance(mask, torch.Tensor) else None
        if current["mask"] is None:
            stats.padding_masked = False

    handles.append(model.register_forward_pre_hook(capture_mask, with_kwargs=True))
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, PerftLayer) and get_variant(m.variant).routed
    ]
    for i, (name, layer) in enumerate(layers):
        device = layer.experts.A.device
        record = LayerRouting(
            name=block_name(name),
            layer=_layer_index(name, i),
            variant=layer.variant,
            num_experts=layer.num_experts,
            top_k=layer.top_k,
            load=torch.zeros(layer.num_experts, dtype=torch.long, device=device),
            tokens=torch.zeros((), dtype=torch.long, device=device),
            entropy_sum=torch.zeros((), dtype=torch.float64, device=device),
        )
        stats.layers.append(record)

        def accumulate(module: PerftLayer, args, output, record: LayerRouting = record) -> None:
            indices, taken = module.routing_indices, module.routing_taken  # (T, K), (T, K) bool or None
            if indices is None or (when is not None and not when()):
                return
            with torch.no_grad():
                keep = _token_mask(current["mask"], indices.shape[0])
                if keep is not None:
                    keep = keep.to(indices.device)
                    indices = indices[keep]
                    taken = None if taken is None else taken[keep]
                chosen = indices.reshape(-1) if taken is None else indices[taken]
                record.load += torch.bincount(chosen, minlength=record.num_experts).to(record.load.device)
                record.tokens += indices.shape[0]
                if module.router is not None and module.router_logits is not None:
                    logp = torch.log_softmax(module.router_logits.detach().float(), dim=-1)  # (T, N)
                    entropy = -(logp.exp() * logp).sum(-1)
                    if keep is not None:
                        entropy = entropy[keep]
                    record.entropy_sum += entropy.double().sum().to(record.entropy_sum.device)

        handles.append(layer.register_forward_hook(accumulate))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


class RoutingStatsCallback(TrainerCallback):
    """Per-layer PEFT-expert load and router entropy over each evaluation of a training run (R, E), logged
    with `log` after the evaluation's own metrics and added to the metrics `evaluate()` returns.

    The hooks count forwards in eval mode only (the training steps between evaluations are not routing
    statistics of the validation set); each evaluation starts from zero."""

    def __init__(self, log: Callable[[dict], None]) -> None:
        self._log = log
        self._tracking = None
        self._stats: RoutingStats | None = None
        self._model: nn.Module | None = None

    def _start(self) -> None:
        model = self._model
        self._tracking = track_routing(model, when=lambda: not model.training)
        self._stats = self._tracking.__enter__()

    def _stop(self) -> None:
        if self._tracking is not None:
            self._tracking.__exit__(None, None, None)
        self._tracking = self._stats = None

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, **kwargs) -> None:
        """Start tracking when the model has a routed PERFT layer (R, E)."""
        routed = model is not None and any(
            isinstance(m, PerftLayer) and get_variant(m.variant).routed for m in model.modules()
        )
        if routed:
            self._model = model
            self._start()

    def on_evaluate(self, args, state, control, metrics: dict | None = None, **kwargs) -> None:
        """Log this evaluation's routing statistics, add them to `metrics` and start again from zero."""
        if self._stats is None:
            return
        routing = self._stats.metrics(prefix=schema.trainer_name(schema.ROUTING))
        self._stop()
        self._start()
        self._log(routing)
        if metrics is not None:
            metrics.update(routing)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        """Remove the hooks."""
        self._stop()
        self._model = None


# --- router subspaces ---------------------------------------------------------------------------------


def orthonormal_row_basis(w: torch.Tensor, rtol: float = 1e-7) -> torch.Tensor:
    """(rank, D) orthonormal basis of the row space of w (n, D), from its SVD."""
    _, s, vh = torch.linalg.svd(w.detach().double().cpu(), full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return vh[:0]
    return vh[: int((s > s[0] * rtol).sum())]


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (n, D), b (m, D) -> (min(rank a, rank b),): the principal angles in degrees, ascending, between the
    row spaces of a and b.

    cos(theta_i) are the singular values of Qa Qb^T for orthonormal row bases Qa, Qb (Björck & Golub).
    0 for a shared direction, 90 for orthogonal subspaces.
    """
    qa, qb = orthonormal_row_basis(a), orthonormal_row_basis(b)
    cos = torch.linalg.svdvals(qa @ qb.T).clamp(0.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def perft_blocks(model: nn.Module) -> list[tuple[int, str, nn.Module, PerftLayer]]:
    """(layer index, block name, the frozen MoE block, its active PERFT adapter) for
    every block carrying PERFT."""
    out = []
    for i, (name, block, tuner) in enumerate(perft_tuner_layers(model)):
        layer = next(tuner.perft_layer[a] for a in tuner.active_adapters if a in tuner.perft_layer)
        out.append((_layer_index(name, i), block_name(name), block, layer))
    return out


def architecture_of(model: nn.Module):
    """The model's MoEArchitecture (architecture_for)."""
    return architecture_for(model)


def router_angles(model: nn.Module, seed: int = 0, random_draws: int = 16) -> list[dict]:
    """Per layer with an R router: principal angles between W_r (N, D) and the frozen W_g (E, D).

    Raises NotApplicable (one line) on a family whose router has no (E, D) matrix.

    `random_mean_deg` is the mean angle for Gaussian (N, D) matrices against W_g (averaged over
    `random_draws`): what an untrained, unrelated router gives (for N + E > D the spaces must meet).
    """
    arch, rows = architecture_of(model), []
    g = torch.Generator().manual_seed(seed)
    for layer, name, block, perft in perft_blocks(model):
        if perft.router is None:
            continue
        w_r = perft.router.weight.detach().float().cpu()
        w_g = arch.router_matrix(block).detach().float().cpu()
        angles = principal_angles(w_r, w_g)
        random = torch.stack(
            [principal_angles(torch.randn(w_r.shape, generator=g), w_g).mean() for _ in range(random_draws)]
        )
        rows.append(
            {
                "layer": layer,
                "name": name,
                "num_experts": w_r.shape[0],
                "base_experts": w_g.shape[0],
                "hidden_size": w_r.shape[1],
                "angles_deg": [round(float(a), 3) for a in angles],
                "min_deg": float(angles.min()),
                "mean_deg": float(angles.mean()),
                "max_deg": float(angles.max()),
                "random_mean_deg": float(random.mean()),
            }
        )
    return rows
