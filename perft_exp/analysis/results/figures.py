"""The results figures, per model/task:

  efficiency-<task>-<model>.png   average accuracy vs activated-trainable ratio (log x), one marker per
                                  variant family, the qv-LoRA baseline as a line
  bottleneck-<task>-<model>.png   average accuracy vs bottleneck r, one line per config

Runs that differ only by seed are one point (runs.merge_seeds) with its 95 % interval as an error bar; the
majority-label and chance averages are reference lines.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from perft_exp.adapters.variants import FIGURE_ORDER, LORA_BASELINES, REGISTRY
from perft_exp.analysis.results.runs import Run, merge_seeds, reference_averages


def _style(variant: str) -> dict:
    """A variant family's marker and colour in the figures (the registry's; black circles else)."""
    spec = REGISTRY.get(variant)
    return dict(spec.style) if spec and spec.style else dict(marker="o", color="black")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax, n_entries: int) -> None:
    if n_entries > 8:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=9, loc="best")


def _yerr(members: list[Run]) -> list[list[float]] | None:
    """Asymmetric error bars (%) from the average's 95 % interval; None when no member has one."""
    cis = [m.ci.get("accuracy", {}).get("average") for m in members]
    if all(ci is None for ci in cis):
        return None
    below = [0.0 if ci is None else 100 * max(m.average - ci[0], 0.0) for m, ci in zip(members, cis)]
    above = [0.0 if ci is None else 100 * max(ci[1] - m.average, 0.0) for m, ci in zip(members, cis)]
    return [below, above]


def _reference_lines(ax, runs: list[Run]) -> int:
    """The majority-label and chance averages as horizontal lines; returns how many were drawn."""
    refs = reference_averages(runs)
    drawn = 0
    for key, label, style in (("majority", "majority label", "--"), ("chance", "chance", "-.")):
        if refs[key] is not None:
            ax.axhline(100 * refs[key], color="0.45", linestyle=style, linewidth=1.1, label=label)
            drawn += 1
    return drawn


def plot_efficiency(runs: list[Run], path: str | Path, title: str = "") -> Path:
    """Average accuracy vs activated-trainable-parameter ratio: the paper's efficiency picture.

    Runs that differ only by seed are one point (their mean) with its 95 % interval as an error bar.
    """
    fig = efficiency_figure(runs, title)
    fig.savefig(path, dpi=130)
    _pyplot().close(fig)
    return Path(path)


def _declutter(fig, labels: list) -> None:
    """Move point labels down, a line at a time, until none overlaps an earlier one (points of nearly equal
    cost and accuracy would otherwise print their labels over each other)."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for text in labels:
        for _ in range(len(labels)):
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = text.get_position()  # (offset points) from its point
            text.set_position((x, y - 9))
        placed.append(text.get_window_extent(renderer))


def efficiency_figure(runs: list[Run], title: str = ""):
    """The figure plot_efficiency saves (its point labels are the axes' texts)."""
    plt = _pyplot()
    from matplotlib import ticker

    runs = merge_seeds(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_family: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.average is not None and run.variant != "none" and run.activated_ratio:
            by_family[run.variant].append(run)
    entries, labels = 0, []
    for family, members in sorted(by_family.items(), key=lambda kv: FIGURE_ORDER.index(kv[0])):
        style = _style(family)
        members = sorted(members, key=lambda r: r.activated_ratio)
        x = [100 * r.activated_ratio for r in members]
        y = [100 * r.average for r in members]
        label = REGISTRY[family].legend
        yerr = _yerr(members)
        if family in LORA_BASELINES:  # MoE-agnostic / -aware LoRA baselines: a line over their ranks
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                linestyle="-" if family == "qv_lora" else "--",
                linewidth=1.5,
                markersize=8,
                capsize=3,
                label=label,
                **style,
            )
        else:
            if yerr is not None:
                ax.errorbar(
                    x, y, yerr=yerr, fmt="none", ecolor=style["color"], elinewidth=1, capsize=3, alpha=0.7
                )
            ax.scatter(
                x, y, s=36, label=label, alpha=0.85, edgecolors="black", linewidths=0.4, zorder=3, **style
            )
        entries += 1
        if len(runs) <= 30:
            for r, xi, yi in zip(members, x, y):
                text = f"{r.config.split(' [')[0].split(' {')[0].replace(' (', '(')} r{r.bottleneck}"
                labels.append(
                    ax.annotate(
                        text, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7, color="0.3"
                    )
                )
    base = next((r for r in runs if r.variant == "none" and r.average is not None), None)
    if base is not None:
        ax.axhline(100 * base.average, color="black", linestyle=":", linewidth=1.2, label="base model")
        entries += 1
    entries += _reference_lines(ax, runs)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.margins(x=0.12)
    ax.set_xlabel("activated trainable parameters / active base parameters (%)")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(title or "accuracy vs activated trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    if entries:
        _legend(ax, entries)
    fig.tight_layout()
    _declutter(fig, labels)
    return fig


def plot_bottleneck(runs: list[Run], path: str | Path, title: str = "") -> Path:
    """Average accuracy vs bottleneck r, one line per config (R (Top2/4), S (1), qv-LoRA, ...).

    Runs that differ only by seed are one point (their mean) with its 95 % interval as an error bar.
    """
    plt = _pyplot()
    from matplotlib import ticker

    runs = merge_seeds(runs)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_config: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.average is not None and run.bottleneck:
            by_config[run.config].append(run)
    configs = sorted(by_config, key=lambda c: by_config[c][0].sort_key())
    # tab20 without its greys (kept for the baseline), so a grid's ~20 configs get distinct colours.
    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]
    tuned = [c for c in configs if by_config[c][0].variant not in LORA_BASELINES]
    per_family = Counter(by_config[c][0].variant for c in configs)
    # Error bars of configs at the same r are dodged apart (a few hundredths of an octave each).
    step = min(0.04, 0.3 / max(len(configs), 1))
    for n, config in enumerate(configs):
        members = sorted(by_config[config], key=lambda r: r.bottleneck)
        dodge = 2 ** (step * (n - (len(configs) - 1) / 2))
        variant = members[0].variant
        style = _style(variant)
        if variant in LORA_BASELINES:
            color, linestyle = style["color"], "--"
        elif per_family[variant] == 1:  # one config of its family: the family's colour, as in the other plot
            color, linestyle = style["color"], "-"
        else:
            i = tuned.index(config)
            color, linestyle = palette[i % len(palette)], "-" if i < len(palette) else "-."
        x, y = [r.bottleneck * dodge for r in members], [100 * r.average for r in members]
        ax.errorbar(
            x,
            y,
            yerr=_yerr(members),
            marker=style["marker"],
            linestyle=linestyle,
            color=color,
            capsize=3,
            label=config,
        )
    base = next((r for r in runs if r.variant == "none" and r.average is not None), None)
    if base is not None:
        ax.axhline(100 * base.average, color="black", linestyle=":", linewidth=1.2, label="base model")
    references = _reference_lines(ax, runs)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("bottleneck size r")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(title or "accuracy vs bottleneck size")
    ax.grid(True, which="both", alpha=0.3)
    if configs:
        _legend(ax, len(configs) + (base is not None) + references)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)
