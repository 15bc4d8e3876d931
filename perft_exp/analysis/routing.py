"""The vector picture and the routing figures of finished runs (the statistics themselves are computed live,
in perft_exp/adapters/routing_stats.py: loads, router entropy, router angles).

    vector_picture(model)           # per layer: 2-D PCA coordinates of FFN keys, routers, PEFT keys
    plot_loads(per_layer, path)     # per-layer PEFT-expert load bars, in the variant's colour (R red, E blue)
    plot_vectors(picture, path)     # the vector picture, one panel per layer

Key vectors. An FFN expert's keys are the rows of its gate projection (where the family keeps them:
MoEArchitecture.gate_rows): token x activates hidden unit i through x . w_i, so the rows are directions in the
input space x lives in. A PEFT expert's keys are likewise the r columns of its down-projection A_j (D, r).
Router rows (W_g (E, D), R's W_r (N, D)) score x the same way. All vectors are scaled to unit length before
PCA, which is fitted on the FFN keys only: the picture compares directions. scripts/analyze_routing.py draws
them for finished runs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from perft_exp.adapters.routing_stats import architecture_of, perft_blocks
from perft_exp.adapters.variants import REGISTRY

# --- the vector picture ---------------------------------------------------------------------------------


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def ffn_keys(block: nn.Module, arch, max_per_expert: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit gate rows of the frozen FFN experts, (E*m, D), and the expert of each row, (E*m,).

    The family's gate/up layout (MoEArchitecture.gate_rows) says where the gate rows are; NotApplicable where
    the experts have no gate/up split."""
    gate = arch.gate_rows(block).detach().float().cpu()  # (E, I, D): x . row = a hidden unit's input
    num_experts = gate.shape[0]
    step = max(1, gate.shape[1] // max_per_expert)
    keys = gate[:, ::step][:, :max_per_expert]  # (E, m, D)
    owner = torch.arange(num_experts).repeat_interleave(keys.shape[1])
    return _unit(keys.reshape(-1, keys.shape[-1])), owner


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (D,), components (2, D), explained variance ratio (2,)) of the rows of x (n, D)."""
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    return mean, vh[:2], var[:2] / var.sum()


def vector_picture(model: nn.Module, max_per_expert: int = 64) -> list[dict]:
    """Per PERFT layer: 2-D coordinates (PCA of the FFN keys) of FFN keys, W_g rows, W_r rows, PEFT keys.

    Each layer's dict holds `ffn_keys` (E*m, 2) with `ffn_owner` (E*m,) (m <= max_per_expert gate rows per
    expert), `base_router` (E, 2), `peft_keys` (N*r, 2) with `peft_owner` (N*r,), `peft_router` (N, 2) or
    None, and `explained` (the two components' variance ratios)."""
    arch, out = architecture_of(model), []
    for layer, name, block, perft in perft_blocks(model):
        keys, owner = ffn_keys(block, arch, max_per_expert)
        mean, comps, ratio = pca_2d(keys)

        def project(v: torch.Tensor, mean=mean, comps=comps) -> torch.Tensor:
            return ((_unit(v.detach().double().cpu()) - mean) @ comps.T).float()

        a = perft.experts.A.detach().float().cpu()  # (N, D, r): column c of A_j is a key
        peft_keys = a.permute(0, 2, 1).reshape(-1, a.shape[1])  # (N*r, D)
        entry = {
            "layer": layer,
            "name": name,
            "variant": perft.variant,
            "explained": [float(r) for r in ratio],
            "ffn_keys": project(keys),
            "ffn_owner": owner,
            "base_router": project(arch.router_matrix(block)),
            "peft_keys": project(peft_keys),
            "peft_owner": torch.arange(a.shape[0]).repeat_interleave(a.shape[2]),
            "peft_router": None if perft.router is None else project(perft.router.weight),
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
        ax.bar(range(len(share)), share, color=REGISTRY[row["variant"]].style["color"], width=0.8)
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
        ax.scatter(
            pk[:, 0],
            pk[:, 1],
            s=9,
            c=[cmap(int(o) % cmap.N) for o in p["peft_owner"]],
            alpha=0.8,
            label="PEFT expert keys (columns of A)",
        )
        g = p["base_router"]
        ax.scatter(
            g[:, 0], g[:, 1], s=28, marker="x", color="black", linewidths=1.2, label="frozen router rows W_g"
        )
        if p["peft_router"] is not None:
            r = p["peft_router"]
            ax.scatter(
                r[:, 0],
                r[:, 1],
                s=140,
                marker="*",
                c=[cmap(j % cmap.N) for j in range(len(r))],
                edgecolors="tab:red",
                linewidths=1.0,
                label="PEFT router rows W_r",
            )
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
