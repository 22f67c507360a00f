"""Recipe: every scorer's layer profile of the teacher, and the layers each (strategy, ratio) of
the config removes: a table on the terminal, a CSV, a JSON record and a plot per choice."""

from __future__ import annotations

from pathlib import Path

from orchestrator.anatomy import decoder_layers
from orchestrator.builders import build_world, load_teacher, pick_device, scoring_context
from orchestrator.config import Config
from orchestrator.pipeline.stages import drop_counts
from orchestrator.prune.profile import format_table, score_all, write_scores


def run_score(cfg: Config, progress: bool = True, log=print) -> None:
    world = build_world(cfg)
    teacher, _ = load_teacher(cfg, world, pick_device(cfg), progress)
    n = len(decoder_layers(teacher))
    choices = [(st, k) for st in cfg.prune.strategy for k in drop_counts(cfg, n)]
    for strategy, k in choices:
        ctx = scoring_context(cfg, world, k, progress)
        results = score_all(teacher, ctx, list(cfg.score.scorers), strategy)
        where = Path(cfg.output_dir) / "scores" / ("" if len(choices) == 1 else f"{strategy}-drop{k}")
        files = write_scores(results, where)
        log(f"{strategy}, removing {k} of {n} layers:\n{format_table(results)}")
        log(f"table: {files['csv']}\nplot: {files['png']}")
