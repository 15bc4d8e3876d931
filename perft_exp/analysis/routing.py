"""Routing analysis of PERFT models: expert loads, router entropy, router subspaces, the vector picture.

    with track_routing(model) as stats:          # hooks on every PERFT layer that routes (R, E)
        model(**batch)
    stats.per_layer()   # [{layer, name, variant, num_experts, top_k, tokens, load, load_entropy, ...}]
    stats.metrics()     # flat {"eval/routing/layer0/load_entropy": ...} for W&B (perft_exp/metric_schema.py)

    principal_angles(W_r, W_g)        # degrees between the row spaces of two (n, D) matrices
    router_angles(model)              # per layer: R's learned router W_r against the frozen router W_g
    vector_picture(model)             # per layer: 2-D PCA coordinates of FFN keys, routers, PEFT keys

Definitions (see scripts/analyze_routing.py for the figures and tables built from them):
- Load of a layer: how many (token, chosen PEFT expert) pairs each of its N experts got; it sums to
  tokens * K. Padding is excluded: a forward pre-hook on the model reads the `attention_mask` keyword
  argument (HF forward and generate pass it by keyword); a call without one counts every position.
  Under generation with a KV cache the mask's last S columns belong to the S new positions.
- load_entropy: entropy of the load distribution divided by log N (1 = perfectly balanced, 0 = collapsed).
- router_entropy (R only): mean over tokens of the entropy, in nats, of q = softmax(W_r x) over N experts;
  router_entropy_norm divides it by log N.
- Key vectors. An FFN expert's keys are the rows of its gate projection (the first I rows of
  gate_up_proj (2I, D)): token x activates hidden unit i through x . w_i, so the rows are directions
  in the input space x lives in. A PEFT expert's keys are likewise the r columns of its down-projection
  A_j (D, r). Router rows (W_g (E, D), R's W_r (N, D)) score x the same way. All vectors are scaled to
  unit length before PCA, which is fitted on the FFN keys only: the picture compares directions.
Statistics are per process (no all-reduce under data parallelism).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from perft_exp import metric_schema as schema
from perft_exp.adapters.block import PerftMoEBlock
from perft_exp.adapters.layer import PerftLayer
from perft_exp.adapters.variants import get_variant
from perft_exp.models.arch import get_architecture


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
            "load_entropy": _normalised_entropy(self.load),
            # 1 = balanced; N = every assignment on one expert
            "max_load_ratio": max(load) * self.num_experts / sum(load) if sum(load) else float("nan"),
            "router_entropy": None,
            "router_entropy_norm": None,
        }
        if self.variant == "R" and tokens:
            h = float(self.entropy_sum) / tokens
            out["router_entropy"] = h
            out["router_entropy_norm"] = h / math.log(self.num_experts) if self.num_experts > 1 else 0.0
        return out


@dataclass
class RoutingStats:
    layers: list[LayerRouting] = field(default_factory=list)
    padding_masked: bool = True  # False once a forward ran without an attention mask

    def per_layer(self) -> list[dict]:
        return [layer.as_dict() for layer in self.layers]

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
def track_routing(model: nn.Module) -> Iterator[RoutingStats]:
    """Accumulate per-layer PEFT-expert loads (and R's router entropy) over the forwards inside the block.

    Only reads: forward hooks are removed on exit and no module state is changed. Layers that do not
    route (D, S) are not tracked; a model without PERFT layers yields empty stats.
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
            name=name.removesuffix(".perft"),
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
            indices = module.routing_indices  # (T, K)
            if indices is None:
                return
            with torch.no_grad():
                keep = _token_mask(current["mask"], indices.shape[0])
                if keep is not None:
                    keep = keep.to(indices.device)
                    indices = indices[keep]
                record.load += torch.bincount(indices.reshape(-1), minlength=record.num_experts).to(
                    record.load.device
                )
                record.tokens += indices.shape[0]
                if module.variant == "R" and module.router_logits is not None:
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


# --- router subspaces ---------------------------------------------------------------------------------


def orthonormal_row_basis(w: torch.Tensor, rtol: float = 1e-7) -> torch.Tensor:
    """(rank, D) orthonormal basis of the row space of w (n, D), from its SVD."""
    _, s, vh = torch.linalg.svd(w.detach().double().cpu(), full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return vh[:0]
    return vh[: int((s > s[0] * rtol).sum())]


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles in degrees (ascending, min(rank a, rank b) of them) between the row spaces of a and b.

    cos(theta_i) are the singular values of Qa Qb^T for orthonormal row bases Qa, Qb (Björck & Golub).
    0 for a shared direction, 90 for orthogonal subspaces.
    """
    qa, qb = orthonormal_row_basis(a), orthonormal_row_basis(b)
    cos = torch.linalg.svdvals(qa @ qb.T).clamp(0.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def perft_blocks(model: nn.Module) -> list[tuple[int, str, PerftMoEBlock]]:
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, PerftMoEBlock)]
    return [(_layer_index(n, i), n, m) for i, (n, m) in enumerate(blocks)]


def _arch(model: nn.Module):
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    return get_architecture(config.model_type)


def router_angles(model: nn.Module, seed: int = 0, random_draws: int = 16) -> list[dict]:
    """Per layer with an R router: principal angles between W_r (N, D) and the frozen W_g (E, D).

    `random_mean_deg` is the mean angle for Gaussian (N, D) matrices against W_g (averaged over
    `random_draws`): what an untrained, unrelated router gives (for N + E > D the spaces must meet).
    """
    arch, rows = _arch(model), []
    g = torch.Generator().manual_seed(seed)
    for layer, name, block in perft_blocks(model):
        if block.perft.router is None:
            continue
        w_r = block.perft.router.weight.detach().float().cpu()
        w_g = arch.router(block.base_layer).weight.detach().float().cpu()
        angles = principal_angles(w_r, w_g)
        random = torch.stack([principal_angles(torch.randn(w_r.shape, generator=g), w_g).mean()
                              for _ in range(random_draws)])  # fmt: skip
        rows.append({
            "layer": layer, "name": name, "num_experts": w_r.shape[0], "base_experts": w_g.shape[0],
            "hidden_size": w_r.shape[1], "angles_deg": [round(float(a), 3) for a in angles],
            "min_deg": float(angles.min()), "mean_deg": float(angles.mean()), "max_deg": float(angles.max()),
            "random_mean_deg": float(random.mean()),
        })  # fmt: skip
    return rows


# --- the vector picture ---------------------------------------------------------------------------------


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def ffn_keys(block: PerftMoEBlock, arch, max_per_expert: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit gate rows of the frozen FFN experts, (E*m, D), and the expert of each row, (E*m,)."""
    experts = arch.experts(block.base_layer)
    gate_up = experts.gate_up_proj.detach().float().cpu()  # (E, 2I, D)
    num_experts, two_i, _ = gate_up.shape
    assert two_i % 2 == 0, f"gate_up_proj {tuple(gate_up.shape)}: expected (E, 2I, D)"
    gate = gate_up[:, : two_i // 2]  # (E, I, D): x . row = the pre-activation of a hidden unit
    step = max(1, gate.shape[1] // max_per_expert)
    keys = gate[:, ::step][:, :max_per_expert]  # (E, m, D)
    owner = torch.arange(num_experts).repeat_interleave(keys.shape[1])
    return _unit(keys.reshape(-1, keys.shape[-1])), owner


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (D,), components (2, D), explained variance ratio (2,)) of the rows of x."""
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    return mean, vh[:2], var[:2] / var.sum()


def vector_picture(model: nn.Module, max_per_expert: int = 64) -> list[dict]:
    """Per PERFT layer: 2-D coordinates (PCA of the FFN keys) of FFN keys, W_g rows, W_r rows, PEFT keys."""
    arch, out = _arch(model), []
    for layer, name, block in perft_blocks(model):
        keys, owner = ffn_keys(block, arch, max_per_expert)
        mean, comps, ratio = pca_2d(keys)

        def project(v: torch.Tensor, mean=mean, comps=comps) -> torch.Tensor:
            return ((_unit(v.detach().double().cpu()) - mean) @ comps.T).float()

        a = block.perft.experts.A.detach().float().cpu()  # (N, D, r): column c of A_j is a key
        peft_keys = a.permute(0, 2, 1).reshape(-1, a.shape[1])  # (N*r, D)
        entry = {
            "layer": layer,
            "name": name,
            "variant": block.perft.variant,
            "explained": [float(r) for r in ratio],
            "ffn_keys": project(keys),
            "ffn_owner": owner,
            "base_router": project(arch.router(block.base_layer).weight),
            "peft_keys": project(peft_keys),
            "peft_owner": torch.arange(a.shape[0]).repeat_interleave(a.shape[2]),
            "peft_router": None if block.perft.router is None else project(block.perft.router.weight),
        }
        out.append(entry)
    return out


# --- figures ------------------------------------------------------------------------------------------


def _grid(n: int, width: float = 3.4, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def plot_loads(per_layer: list[dict], path, title: str = "") -> None:
    """One bar chart per layer: each PEFT expert's share of the token assignments, uniform share dashed."""
    from matplotlib.ticker import MaxNLocator

    plt, fig, axes = _grid(len(per_layer))
    for ax, row in zip(axes, per_layer):
        total = sum(row["load"]) or 1
        share = [100 * c / total for c in row["load"]]
        ax.bar(range(len(share)), share, color="tab:red" if row["variant"] == "R" else "tab:blue", width=0.8)
        ax.axhline(100 / row["num_experts"], color="black", linestyle="--", linewidth=1, label="uniform")
        text = f"layer {row['layer']}  H_load={row['load_entropy']:.2f}"
        if row["router_entropy_norm"] is not None:
            text += f"  H_router={row['router_entropy_norm']:.2f}"
        ax.set_title(text, fontsize=9)
        ax.set_xlabel(f"PEFT expert (top-{row['top_k']} of {row['num_experts']})", fontsize=8)
        if row["num_experts"] <= 16:
            ax.set_xticks(range(row["num_experts"]))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("share of assignments (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    if axes:
        axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "PEFT-expert load per layer", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vectors(picture: list[dict], path, title: str = "") -> None:
    """One panel per layer, in the FFN keys' PCA plane: FFN keys (grey), frozen router rows W_g (black x),
    PEFT keys (columns of A, one colour per PEFT expert) and R's router rows W_r (stars, row j numbered
    and in expert j's colour)."""
    plt, fig, axes = _grid(len(picture), width=3.8, height=3.6)
    cmap = plt.get_cmap(
        "tab10" if max((int(p["peft_owner"].max()) for p in picture), default=0) < 10 else "tab20"
    )
    for ax, p in zip(axes, picture):
        k = p["ffn_keys"]
        ax.scatter(k[:, 0], k[:, 1], s=3, color="0.75", alpha=0.5, label="FFN expert keys (gate rows)")
        pk = p["peft_keys"]
        ax.scatter(pk[:, 0], pk[:, 1], s=9, c=[cmap(int(o) % cmap.N) for o in p["peft_owner"]], alpha=0.8,
                   label="PEFT expert keys (columns of A)")  # fmt: skip
        g = p["base_router"]
        ax.scatter(
            g[:, 0], g[:, 1], s=28, marker="x", color="black", linewidths=1.2, label="frozen router rows W_g"
        )
        if p["peft_router"] is not None:
            r = p["peft_router"]
            ax.scatter(r[:, 0], r[:, 1], s=140, marker="*", c=[cmap(j % cmap.N) for j in range(len(r))],
                       edgecolors="tab:red", linewidths=1.0, label="PEFT router rows W_r")  # fmt: skip
            for j, (x, y) in enumerate(r.tolist()):
                ax.annotate(
                    str(j), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color="tab:red"
                )
        ev = p["explained"]
        ax.set_title(f"layer {p['layer']} ({p['variant']})", fontsize=9)
        ax.set_xlabel(f"PC1 of FFN keys ({100 * ev[0]:.1f}% var.)", fontsize=8)
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% var.)", fontsize=8)
        ax.tick_params(labelsize=7)
    if axes:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title or "router and expert vectors (unit length) in the FFN keys' PCA plane", fontsize=11)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))  # room for the legend below
    fig.savefig(path, dpi=120)
    plt.close(fig)
