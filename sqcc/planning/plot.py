"""The sweep's Pareto plot: agreement (and accuracy) against the MAC (or parameter) fraction."""
from __future__ import annotations

from pathlib import Path


def plot_pareto(rows, path, metric="macs"):
    """Agreement (and accuracy) vs MAC (or param) fraction, one line per fitting mode."""
    # imported here, not at the top: matplotlib is slow to import and only the sweep's plot needs it,
    # and its backend must be chosen (headless Agg) before pyplot is first imported
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    orig = next((r for r in rows if r["mode"] == "original"), None)
    key = f"{metric}_frac"
    styles = {"weight": ("tab:orange", "weight-only"), "data": ("tab:blue", "data-aware")}
    for mode, (color, label) in styles.items():
        rs = sorted([r for r in rows if r["mode"] == mode], key=lambda r: r[key])
        if not rs:
            continue
        xs = [r[key] for r in rs] + ([1.0] if orig else [])
        ax.plot(xs, [r["agreement"] for r in rs] + ([1.0] if orig else []), "o-", color=color,
                label=f"{label}: top-1 agreement")
        if all("accuracy" in r for r in rs):
            ax.plot(xs, [r["accuracy"] for r in rs] + ([orig["accuracy"]] if orig and "accuracy" in orig else []),
                    "s--", color=color, alpha=0.7, label=f"{label}: top-1 accuracy")
    if orig and "accuracy" in orig:
        ax.axhline(orig["accuracy"], color="grey", lw=0.8, ls=":", label="original accuracy")
    name = rows[0].get("model", "") if rows else ""
    ax.set_xlabel(f"{'MAC' if metric == 'macs' else 'parameter'} fraction of the original")
    ax.set_ylabel("fraction of evaluation images")
    ax.set_title(f"{name}: low-rank budget sweep (no retraining)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    from ..outputs import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format=Path(path).suffix.lstrip(".") or "png"), "--plot")
    plt.close(fig)
    return path
