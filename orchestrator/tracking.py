"""MLflow: one parent run per sweep, one baseline run for the unpruned teacher and one
child run per trial under it, so the teacher and every student sit on one chart.

Child-run contract (keep the names stable): params `dropped_layers`, `kept_layers`,
`scorer`, `ratio`; metrics `wer` (%), `sim`, `n_layers`, `params_m`, `rtf`, `speedup`,
`wer_delta` (points), `sim_delta`, and the training curves by step. Every function
takes explicit run ids (no "active run"), so the sweep driver, trial drivers and
Train workers on other nodes can all log to the same runs.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
import warnings
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

PARENT = "mlflow.parentRunId"
ROLE = "prun_tts.role"  # sweep | baseline | trial


def experiment_id(uri: str, name: str) -> str:
    if uri.startswith("sqlite:///"):  # the first write of a run: the database's folder is made here
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in whatever directory a worker runs in
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def find_run(uri: str, exp_id: str, tags: dict[str, str]) -> str | None:
    """The id of a run carrying all `tags` (how a resumed sweep finds its runs again)."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = MlflowClient(uri).search_runs([exp_id], filter_string=where, max_results=1)
    return runs[0].info.run_id if runs else None


def start_run(
    uri: str,
    exp_id: str,
    name: str,
    role: str,
    parent: str | None = None,
    params: dict | None = None,
    tags: dict | None = None,
) -> str:
    client = MlflowClient(uri)
    all_tags = {ROLE: role, **(tags or {})}
    if parent:
        all_tags[PARENT] = parent
    run = client.create_run(exp_id, tags=all_tags, run_name=name)
    rows = [Param(k, _param(v)) for k, v in (params or {}).items()]
    for i in range(0, len(rows), 100):  # MLflow's batch limit is 100 params
        client.log_batch(run.info.run_id, params=rows[i : i + 100])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict, step: int = 0) -> None:
    _send(uri, run_id, _metric_rows(metrics, step))


def log_metrics_once(uri: str, run_id: str, metrics: dict) -> None:
    """The metrics the run does not hold yet (a resumed sweep logs nothing twice)."""
    held = MlflowClient(uri).get_run(run_id).data.metrics
    log_metrics(uri, run_id, {k: v for k, v in metrics.items() if k not in held})


def _metric_rows(metrics: dict, step: int) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]


def _send(uri: str, run_id: str, rows: list[Metric]) -> None:
    for i in range(0, len(rows), 900):  # MLflow's batch limit is 1000 metrics
        MlflowClient(uri).log_batch(run_id, metrics=rows[i : i + 900])


class CurveLogger:
    """Training curves of a run, buffered and sent in batches. A batch the server does not take
    (down, busy, a locked sqlite file; MLflow's client has already retried for minutes) stays in
    the buffer and goes with the next flush: a warning, never fatal to training, nothing sent twice.
    A resumed trial replays the steps between its last checkpoint and the crash (to the same values:
    training is deterministic per step); the points the run already holds are not sent again.
    However long the training, a curve holds about `points` points: every k-th step and the last."""

    def __init__(self, uri: str, run_id: str, steps: int, points: int = 200, prefix: str = "train/"):
        self.uri, self.run_id, self.steps = uri, run_id, steps
        self.every = max(1, math.ceil(steps / points))
        self.rows: list[Metric] = []
        self.logged_through = _last_step(uri, run_id, prefix)

    def add(self, metrics: dict, step: int) -> None:
        on_grid = step % self.every == 0 or step == self.steps
        if on_grid and step > self.logged_through:
            self.rows += _metric_rows(metrics, step)

    def flush(self) -> None:
        while self.rows:
            try:
                MlflowClient(self.uri).log_batch(self.run_id, metrics=self.rows[:900])  # MLflow's limit: 1000
            except Exception as e:  # noqa: BLE001 (any tracking failure)
                warnings.warn(
                    f"MLflow: {len(self.rows)} training-curve points of run {self.run_id} not logged yet "
                    f"(kept for the next report): {e}",
                    stacklevel=2,
                )
                return
            del self.rows[:900]


def _last_step(uri: str, run_id: str, prefix: str) -> int:
    """The highest step of any `prefix` curve the run holds (0: none, or the server cannot say)."""
    try:
        client = MlflowClient(uri)
        keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(prefix)]
        return max((m.step for k in keys for m in client.get_metric_history(run_id, k)), default=0)
    except Exception as e:  # noqa: BLE001 (a server that is down: worst case, points replayed twice)
        warnings.warn(
            f"MLflow: cannot read run {run_id}'s curves ({e}); a resumed trial may log steps again", stacklevel=3
        )
        return 0


def curve_rows(uri: str, run_id: str, prefix: str = "train/") -> list[dict]:
    """A run's training curves as one row per step ({"step": 1, "loss": ...}), `prefix` stripped."""
    client = MlflowClient(uri)
    rows: dict[int, dict] = {}
    for key in (k for k in client.get_run(run_id).data.metrics if k.startswith(prefix)):
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(m.step, {"step": m.step})[key.removeprefix(prefix)] = m.value
    return [rows[s] for s in sorted(rows)]


def download_artifacts(uri: str, run_id: str, path: str, dest: str | Path) -> Path:
    """A run's artifact folder (or file) `path`, copied under `dest`."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small files: no bars in the console
    Path(dest).mkdir(parents=True, exist_ok=True)
    return Path(MlflowClient(uri).download_artifacts(run_id, path, str(dest)))


def log_artifacts(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client = MlflowClient(uri)
    p = Path(path)
    if p.is_dir():
        client.log_artifacts(run_id, str(p), artifact_path)
    elif p.is_file():
        client.log_artifact(run_id, str(p), artifact_path)


def log_table(uri: str, run_id: str, rows: list[dict], artifact_file: str) -> None:
    """Rows as a table artifact the UI shows as a table (and `mlflow.load_table` reads back),
    logged once: MLflow appends to a table the run holds, so a resumed sweep leaves it as it is."""
    client = MlflowClient(uri)
    folder = Path(artifact_file).parent
    if any(f.path == artifact_file for f in client.list_artifacts(run_id, None if folder == Path() else str(folder))):
        return
    columns = list(rows[0]) if rows else []
    client.log_table(run_id, {c: [r[c] for r in rows] for c in columns}, artifact_file)


def register_version(uri: str, name: str, run_id: str, artifact_path: str, tags: dict, description: str) -> str | None:
    """A new version of registered model `name` from the run's `artifact_path`; its version
    number, or None where the registry already holds a version from this run (a resumed or
    repeated sweep registers its student once)."""
    client = MlflowClient(uri)
    if client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        return None
    try:
        client.create_registered_model(name)
    except Exception:  # noqa: BLE001 (it exists: made by an earlier sweep or meanwhile by another)
        client.get_registered_model(name)  # anything else (a server that is down) raises here
    version = client.create_model_version(
        name,
        f"runs:/{run_id}/{artifact_path}",
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items()},
        description=description,
    )
    return version.version


class SystemMetrics:
    """CPU, memory, disk, network (and GPU where there is one) of this node, sampled into a run
    as `system/...` metrics while the block runs (MLflow's own monitor, bound to an explicit run)."""

    def __init__(self, uri: str, run_id: str, on: bool, every_s: float = 10.0):
        self.monitor = None
        if on:
            self.monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, tracking_uri=uri)

    def __enter__(self):
        if self.monitor:
            self.monitor.start()
        return self

    def __exit__(self, *exc):
        if self.monitor:
            self.monitor.finish()


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(uri).set_terminated(run_id, status)


def set_status(uri: str, run_id: str, status: str) -> None:
    """A resumed run goes back to RUNNING (finish_run closes it again)."""
    MlflowClient(uri).update_run(run_id, status=status)


def set_tag(uri: str, run_id: str, key: str, value: str) -> None:
    MlflowClient(uri).set_tag(run_id, key, value)


def code_version() -> str:
    """The git commit the sweep ran from ("+dirty" with uncommitted changes), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if commit.returncode:
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param(v) -> str:
    """A param as the UI compares it: numbers as they are written (0.5, 12), lists as 2,3, None empty."""
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ",".join(map(_param, v))
    return str(v)[:6000]  # MLflow's param value limit
