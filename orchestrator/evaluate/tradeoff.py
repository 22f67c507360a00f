"""Quality against depth: the Pareto front of a sweep and its plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto_front(rows: Sequence[dict], x: str = "n_layers", y: str = "wer") -> list[dict]:
    """Rows no other row beats on both `x` and `y` (both minimised), sorted by `x`."""
    front = []
    for r in rows:
        dominated = any(o[x] <= r[x] and o[y] <= r[y] and (o[x] < r[x] or o[y] < r[y]) for o in rows)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r[x], r[y]))


def plot_tradeoff(
    rows: Sequence[dict], teacher: dict | None, path: str | Path, x: str = "n_layers", y: str = "wer"
) -> Path:
    """Every trial (grey), the Pareto front (line) and the teacher (star), labelled by layer set."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r[x] for r in rows], [r[y] for r in rows], color="#7f7f7f", label="trials", zorder=2)
    front = pareto_front(rows, x, y)
    ax.plot([r[x] for r in front], [r[y] for r in front], "-o", color="#d62728", label="Pareto front", zorder=3)
    for r in rows:
        ax.annotate(r.get("label", ""), (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if teacher is not None:
        ax.scatter([teacher[x]], [teacher[y]], marker="*", s=200, color="#1f77b4", label="teacher", zorder=4)
    ax.set_xlabel("decoder layers" if x == "n_layers" else x)
    ax.set_ylabel("WER %" if y == "wer" else y)
    ax.set_title("Quality against depth")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
