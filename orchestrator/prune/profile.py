"""The layer-importance profile: every scorer's scores of every layer and the layers it
removes, as a console table, a CSV, a JSON record (what the results folder holds) and a plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import nn  # noqa: E402

from orchestrator.files import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402
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
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["layer", *names, *(f"{s}_drop" for s in names)])
    for layer in range(n):
        w.writerow(
            [layer, *(results[s][0].scores[layer] for s in names), *(int(layer in results[s][1]) for s in names)]
        )
    csv_path = atomic_write_text(out / "layer_scores.csv", text.getvalue())
    json_path = atomic_write_json(out / "layer_scores.json", scores_record(results))
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
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    plt.close(fig)
    return {"csv": csv_path, "json": json_path, "png": png_path}


def scores_record(results: dict[str, tuple[LayerScores, list[int]]]) -> dict:
    """scorer -> {"scores", "drop", "evidence"}: layer_scores.json, and scores.json of a results folder."""
    return {s: {"scores": sc.scores, "drop": d, "evidence": sc.evidence} for s, (sc, d) in results.items()}
