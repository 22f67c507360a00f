"""The report's figures, drawn from measured values only (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHOSEN, TEACHER, OTHER = "#d62728", "#2ca02c", "#7f7f7f"
_META = {"Software": None}  # no matplotlib version in the file: the same results, the same bytes


def importance_profile(scores: dict, path: Path) -> Path:
    """One bar chart per scorer: each layer's score, the layers it removes in red."""
    names = list(scores)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 1.8 * len(names) + 0.8), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        values, drop = scores[name]["scores"], set(scores[name]["drop"])
        ax.bar(range(len(values)), values, color=[CHOSEN if i in drop else "#1f77b4" for i in range(len(values))])
        ax.set_ylabel(name)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[-1, 0].set_xlabel("decoder layer (red: removed by this scorer at the deepest cut)")
    axes[-1, 0].set_xticks(range(len(scores[names[-1]]["scores"])))
    fig.suptitle("Layer importance (higher: the layer matters more)")
    fig.tight_layout()
    return _save(fig, path)


def wer_against_depth(students: list[dict], teacher: dict, front: list[str], chosen: str, path: Path) -> Path:
    """Left: WER (each model's 95% interval) against depth: the teacher, every student, the Pareto
    front. Right: each student's dWER with its paired 95% interval (same items, same seeds as the
    teacher's), the figure that says whether a student is worse. `students`: {trial_id, label,
    n_layers, wer, wer_ci, wer_delta, wer_delta_ci_low, wer_delta_ci_high}; `front`: trial ids."""
    fig, (ax, dax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for s in students:
        lo, hi = s["wer_ci"]
        color = CHOSEN if s["trial_id"] == chosen else OTHER
        ax.errorbar(s["n_layers"], s["wer"], yerr=[[s["wer"] - lo], [hi - s["wer"]]], fmt="o", color=color, capsize=3)
        ax.annotate(s["label"], (s["n_layers"], s["wer"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        d, dlo, dhi = s["wer_delta"], s["wer_delta_ci_low"], s["wer_delta_ci_high"]
        dax.errorbar(s["n_layers"], d, yerr=[[d - dlo], [dhi - d]], fmt="o", color=color, capsize=3)
        dax.annotate(f"{s['label']}  {d:+.2f} [{dlo:+.2f}, {dhi:+.2f}]", (s["n_layers"], d),
                     textcoords="offset points", xytext=(5, 4), fontsize=7)  # fmt: skip
    on_front = sorted((s for s in students if s["trial_id"] in front), key=lambda s: s["n_layers"])
    ax.plot([s["n_layers"] for s in on_front], [s["wer"] for s in on_front], "-", color=CHOSEN, label="Pareto front")
    lo, hi = teacher["wer_ci"]
    ax.errorbar(
        teacher["n_layers"],
        teacher["wer"],
        yerr=[[teacher["wer"] - lo], [hi - teacher["wer"]]],
        fmt="*",
        markersize=13,
        color=TEACHER,
        capsize=3,
        label="teacher",
    )
    ax.set_xlabel("decoder layers")
    ax.set_ylabel("WER (%), 95% interval")
    ax.set_title("Quality against depth")
    ax.legend()
    dax.axhline(0, color=TEACHER, linewidth=1, label="teacher (dWER 0)")
    dax.set_xlim(ax.get_xlim())  # the same depth axis as the left panel
    dax.set_xlabel("decoder layers")
    dax.set_ylabel("dWER (points), paired 95% interval")
    dax.set_title("Student minus teacher, same items and seeds")
    dax.legend()
    fig.tight_layout()
    return _save(fig, path)


def distillation_curves(curves: dict[str, list[dict]], labels: dict[str, str], path: Path) -> Path:
    """Each student's distillation loss by optimizer step."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for trial, rows in curves.items():
        steps, loss = zip(*[(r["step"], r["loss"]) for r in rows if "loss" in r])
        (line,) = ax.plot(steps, loss, alpha=0.25, linewidth=0.8)  # every step, faint
        window = max(1, len(loss) // 40)  # and a moving average: the trend through the step-to-step noise
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color=line.get_color(), label=f"drop {labels.get(trial, trial)}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("distillation loss")
    ax.set_yscale("log")
    ax.set_title("Distillation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata=_META)
    plt.close(fig)
    return path
