"""What the terminal shows: our stages and progress. Ray's, MLflow's and Optuna's own messages
(worker report lines, placement-group and raylet warnings, database migrations) and Python
warnings go to a log file whose path is printed, or stay on the terminal with --verbose."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

CHATTY = ("ray", "mlflow", "alembic", "optuna", "py.warnings", "urllib3")


def route_chatter(log_file: Path, verbose: bool) -> Path | None:
    """Send the libraries' log records to `log_file` (appended); None when `verbose`. Call it
    again after `ray.init`, which resets Ray's logger."""
    if verbose:
        return None
    root = logging.getLogger()
    if not any(getattr(h, "baseFilename", None) == str(log_file.resolve()) for h in root.handlers):
        handler = _FileMadeOnFirstRecord(log_file)
        handler.setLevel(logging.WARNING)  # their warnings and errors; INFO chatter is not kept
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    for name in CHATTY:  # their own terminal handlers off: records reach the file through the root logger
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    logging.captureWarnings(True)  # warnings.warn(...) -> the py.warnings logger -> the file
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's legacy reporter: verbose=0 prints nothing (no boxes, hints)
    _ray_prints_to(log_file)
    return log_file


def _ray_prints_to(log_file: Path) -> None:
    """Ray prints its workers' output and the raylet's warnings (worker start-up counts and the
    like) to the driver's terminal itself, not through logging; send them to the file instead
    (before `ray.init`, which binds this function for worker output; Ray is pinned: 2.60)."""
    import ray._private.worker as ray_worker  # only for the commands that start Ray: console.py must not load it

    def to_file(data: dict, ignore_prefix: bool = False) -> None:
        if not data.get("lines"):  # Ray sends empty batches too: no file for them
            return
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") as f:
            f.writelines(f"({data.get('pid', '')}) {line}\n" for line in data.get("lines", []))

    ray_worker.print_to_stdstream = to_file


class _FileMadeOnFirstRecord(logging.FileHandler):
    """A log file (and its folder) created by its first record, not before: a command refused
    after connecting to Ray leaves nothing behind."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler, `ray job stop`), handled as Ctrl-C is: the
    command stops where it is, keeps what is done and says how to resume (exit 143)."""

    signum = signal.SIGTERM


def stop_on_sigterm() -> None:
    """SIGTERM raises Terminated in the main thread. Call it again after `ray.init`, whose own
    handler would abort the process with a stack dump and leave the MLflow run RUNNING."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


TERMINATED = (
    threading.Event()
)  # set by SIGTERM: a library that re-raises a plain KeyboardInterrupt (Tune) loses the kind


def _terminated(signum, frame):
    TERMINATED.set()
    raise Terminated()
