"""Recipe: score every layer of the teacher with each configured scorer; write the
table (CSV) and the layer-importance profile (PNG)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import nn  # noqa: E402

from orchestrator.prune.importance import LayerScores, ScoringContext  # noqa: E402
from orchestrator.prune.select import choose_layers  # noqa: E402


def score_all(
    model: nn.Module, ctx: ScoringContext, scorers: list[str], strategy: str
) -> dict[str, tuple[LayerScores, list[int]]]:
    """Scores of each scorer and the layers it would drop with `strategy`."""
    out = {}
    for name in scorers:
        drop, scores = choose_layers(strategy, name, model, ctx, ctx.n_drop)
        out[name] = (scores, drop)
    return out


def format_table(results: dict[str, tuple[LayerScores, list[int]]]) -> str:
    names = list(results)
    n = len(next(iter(results.values()))[0].scores)
    lines = ["layer " + " ".join(f"{s:>16}" for s in names)]
    for layer in range(n):
        cells = []
        for s in names:
            scores, drop = results[s]
            cells.append(f"{scores.scores[layer]:>15.4f}{'x' if layer in drop else ' '}")
        lines.append(f"{layer:>5} " + " ".join(cells))
    lines.append("(x: layer removed by that scorer)")
    return "\n".join(lines)


def write_scores(results: dict[str, tuple[LayerScores, list[int]]], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(results)
    n = len(next(iter(results.values()))[0].scores)
    csv_path = out / "layer_scores.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", *names, *(f"{s}_drop" for s in names)])
        for layer in range(n):
            w.writerow(
                [layer, *(results[s][0].scores[layer] for s in names), *(int(layer in results[s][1]) for s in names)]
            )
    json_path = out / "layer_scores.json"
    json_path.write_text(
        json.dumps(
            {s: {"scores": sc.scores, "drop": d, "evidence": sc.evidence} for s, (sc, d) in results.items()},
            indent=2,
            default=str,
        )
    )
    png_path = out / "layer_importance.png"
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.7 * len(names) + 0.6), sharex=True, squeeze=False)
    for ax, s in zip(axes[:, 0], names):
        scores, drop = results[s]
        colors = ["#d62728" if i in drop else "#1f77b4" for i in range(n)]
        ax.bar(range(n), scores.scores, color=colors)
        ax.set_ylabel(s, rotation=0, ha="right", va="center")
        ax.axhline(0, color="grey", lw=0.5)
    axes[-1, 0].set_xlabel("decoder layer (red: removed)")
    axes[-1, 0].set_xticks(range(n))
    fig.suptitle("Layer importance (higher = matters more)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return {"csv": csv_path, "json": json_path, "png": png_path}
