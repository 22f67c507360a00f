"""Recipe: one student distilled in this process: the layers given (`--drop`/`--keep`), or the
one plan prune.* describes (prune.scorer=best included), under output_dir/students/."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Config
from orchestrator.distill.engine import distill
from orchestrator.pipeline import stages


def run_distill(cfg: Config, drop: tuple[int, ...] | None, progress: bool = True, log=print) -> Path:
    """The student's folder. `drop`: the layers to remove (None: the plan of prune.*)."""
    out = Path(cfg.output_dir).resolve()
    teacher = stages.teacher_stage(cfg, progress)
    if drop is None:
        drop = stages.plans_stage(cfg, teacher, stages.LocalExecutor(), out / "state")[0].drop
    world, model = stages.world_and_teacher(cfg, teacher)
    fingerprint = stages.student_fingerprint(cfg, teacher, drop)
    where = stages.student_dir(out / "students", drop, fingerprint)
    distill(cfg, world, model, teacher.train_tokens, drop, where, progress, fingerprint)
    log(f"student: {where / 'student'} (dropped layers {list(drop)})")
    return where / "student"
