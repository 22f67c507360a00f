"""Recipe: the listening page of finished runs, from their results folders (--sweep) and from
sweeps' MLflow runs (--run), one section each, in that order."""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator import tracking
from orchestrator.config import ConfigError
from orchestrator.files import durable
from orchestrator.pipeline.preflight import check_tracking, tracking_uri
from orchestrator.report.page import build_report, check_report_dir
from orchestrator.report.results import read_results


def run_report(sweeps: list[str], runs: list[str], uri: str | None, out: str | None) -> Path:
    """index.html of the page; every source read and verified before anything is written."""
    if not sweeps and not runs:
        raise ConfigError("give --sweep DIR (a finished sweep's or demo's folder) or --run RUN_ID (its MLflow run)")
    uri = tracking_uri(uri) if runs else None
    if uri:
        check_tracking(uri)
    folders = [durable(d) for d in sweeps]  # in a Ray job, relative paths are under ~/prun-tts
    where = Path(durable(out or (str(Path(sweeps[0]) / "report") if sweeps else f"report-{runs[0][:8]}")))
    check_report_dir(where)
    with tempfile.TemporaryDirectory(prefix="prun-tts-report-") as downloads:
        sources = [read_results(d) for d in folders]
        for run_id in runs:
            sources.append(read_results(_run_results(uri, run_id, Path(downloads) / run_id)))
        return build_report(sources, where)


def _run_results(uri: str, run_id: str, dest: Path) -> Path:
    try:
        return tracking.download_artifacts(uri, run_id, "results", dest)
    except Exception as e:  # noqa: BLE001 (MLflow raises its own kinds for an unknown run or artifact)
        raise ConfigError(
            f"--run {run_id}: cannot read its results from {uri} ({e.__class__.__name__}: {str(e)[:200]}); "
            "give the id of a finished sweep's run (MLflow UI: the sweep's parent run) and --tracking-uri"
        ) from None
