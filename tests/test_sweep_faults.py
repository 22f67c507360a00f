"""`prun-tts sweep` under faults, on real processes: the driver killed (SIGKILL) mid-trial and
the same command run again, its figures compared with a sweep whose MLflow server was stopped
mid-sweep and started again; a trial whose Train workers die.

Every sweep is the `prun-tts` command in a subprocess leading its own session, on a private
local Ray. The tests stop only what they started: the command's process group, then whatever
else is left of its session (Ray's workers lead process groups of their own, in the same
session). Ray's session files go to a short directory of each test's own (RAY_TMPDIR).
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import TINY_WORLD, free_port
from mlflow import MlflowClient
from mlflow.entities import ViewType

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "mini-sweep"
# 8 distillation pairs in batches of 4 = 2 steps an epoch: 12 steps, a checkpoint every 2
DISTILL = ["distill.data_fraction=0.5", "distill.batch_size=4", "distill.epochs=6", "train.report_every=2"]
STEPS = 12

pytestmark = pytest.mark.slow(minutes=8)


# ------------------------------------------------------------------ processes this module starts


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


class Session:
    """A command started in a session of its own; `stop` ends the session's processes, only those."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        self.proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def members(self) -> list[psutil.Process]:
        return [p for p in psutil.process_iter() if _sid(p.pid) == self.proc.pid]

    def stop(self, sig=signal.SIGKILL, grace: float = 20) -> None:
        try:
            os.killpg(self.proc.pid, sig)  # first, then the look for the rest: a kill -9 lands at once
        except ProcessLookupError:
            pass
        members = self.members()
        _, alive = psutil.wait_procs(members, timeout=0 if sig == signal.SIGKILL else grace)
        for p in alive + self.members():  # Ray's workers, in process groups of their own
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)
        psutil.wait_procs(self.members(), timeout=10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.log} did not finish in {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@pytest.fixture
def started(tmp_path):
    """Start sessions; each is stopped at the end (a finished one has nothing left to stop)."""
    sessions: list[Session] = []
    ray_tmp = Path(tempfile.mkdtemp(prefix="sf-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PRUN_TTS_CACHE": str(tmp_path / "cache"),
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)

    def start(args: list[str], log: Path) -> Session:
        s = Session(args, env, log)
        sessions.append(s)
        return s

    try:
        yield start
    finally:
        for s in reversed(sessions):
            s.stop(signal.SIGTERM)
        leftovers = [p for s in sessions for p in s.members()]
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert not leftovers, f"processes of the tests' sessions still alive: {leftovers}"


def sweep_cmd(root: Path, *extra: str) -> list[str]:
    sets = TINY_WORLD + [
        f"world.teacher.path={root / 'no-teacher'}",
        f"output_dir={root / 'runs'}",
        f"sweep.storage_path={root / 'sweeps'}",
        "prune.scorer=[wli]",
        "distill.ema=0.9",
        "distill.teacher_cache=true",
        *DISTILL,
        *extra,
    ]
    args = [str(BIN / "prun-tts"), "sweep", "--config", "configs/mini.yaml"]  # no --quiet: one line per report
    for s in sets:
        args += ["--set", s]
    return args


def wait_until(check, timeout: float, what: str, session: Session | None = None, every: float = 0.05):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        if session is not None and session.proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {session.proc.returncode}) before {what}:\n{session.tail()}")
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s" + (f"\n{session.tail()}" if session else ""))


# ------------------------------------------------------------------ what a sweep leaves


def latest_checkpoints(base: Path) -> dict[str, dict]:
    """train-<trial id> -> the metrics of its Train run's latest checkpoint (registered and on disk)."""
    out = {}
    for run in sorted((base / "train").glob("train-*")):
        try:
            latest = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not written yet, or being written
        if latest and (run / latest["checkpoint_dir_name"]).is_dir():
            out[run.name] = {**latest["metrics"], "dir": latest["checkpoint_dir_name"]}
    return out


def trial_rows(base: Path) -> dict[str, dict]:
    """trials.csv by dropped layers."""
    with (base / "results" / "trials.csv").open() as f:
        return {r["dropped_layers"]: r for r in csv.DictReader(f)}


def runs_by_role(client: MlflowClient) -> dict[str, list]:
    exp = client.get_experiment_by_name("prun-tts").experiment_id
    out: dict[str, list] = {}
    for run in client.search_runs([exp], run_view_type=ViewType.ALL, max_results=1000):
        out.setdefault(run.data.tags.get("prun_tts.role"), []).append(run)
    return out


def curves(client: MlflowClient, trials: list) -> dict[str, list[tuple[int, float]]]:
    """dropped layers -> the train/loss points (step, value) MLflow holds, in step order."""
    return {
        r.data.params["dropped_layers"]: sorted(
            (m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train/loss")
        )
        for r in trials
    }


def tree(path: Path) -> dict[str, int]:
    """Every file under `path` -> its modification time (ns)."""
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*")) if p.is_file()}


def steps_reported(base: Path, trial_id: str) -> list[int]:
    """The steps of a trial's results, in the order Tune recorded them (its progress.csv)."""
    (trial_dir,) = (base / "tune").glob(f"run_trial_{trial_id}_*")
    with (trial_dir / "progress.csv").open() as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


SAME = ("status", "n_layers", "params_m", "wer", "sim", "wer_delta", "sim_delta", "loss")  # not rtf, speed-up, time


# ------------------------------------------------------------------ an MLflow server of the test's own


def mlflow_server(started, tmp_path: Path, port: int, log: Path, wait: bool = True) -> Session:
    """`mlflow server` on `port` (the same store each time); `wait`: until it answers."""
    server = started(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow-server.db'}",
            "--artifacts-destination",
            str(tmp_path / "mlflow-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        log,
    )
    if wait:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), 180, "the MLflow server", server, every=0.5)
    return server


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


# ------------------------------------------------------------------ 1. kill -9 and resume; the MLflow server goes away

OUTAGE_S = 20


def test_killed_sweep_resumes_to_the_result_of_one_whose_mlflow_server_went_away(tmp_path, started):
    """Two faults, one reference. U is never killed: it logs to an MLflow server that is stopped
    while U's trials train and started again OUTAGE_S later (MLflow's client retries, so U finishes
    and its runs are whole). K runs one trial at a time; its whole process group is SIGKILLed once
    the first trial has finished and the second has a mid-training checkpoint, and the same command
    then finishes it. U's training never noticed the outage: K's figures must be U's, to the digit."""
    u_root, k_root = tmp_path / "U", tmp_path / "K"
    port = free_port()
    server = mlflow_server(started, tmp_path, port, tmp_path / "mlflow-1.log")
    u_cmd = sweep_cmd(u_root, "sweep.local_cpus=5", f"tracking.uri=http://127.0.0.1:{port}")
    u = started(u_cmd, tmp_path / "U.log")
    u_base = u_root / "sweeps" / NAME
    # K starts once U has the mini teacher in the shared cache (one training of it, no race)
    wait_until(lambda: "[2/7]" in u.log.read_text(), 600, "U's teacher", u, every=0.5)
    k_cmd = sweep_cmd(k_root, "sweep.local_cpus=3", "sweep.max_concurrent_trials=1")
    k = started(k_cmd, tmp_path / "K1.log")
    k_base = k_root / "sweeps" / NAME

    def first_done_second_midway():
        ckpts = latest_checkpoints(k_base)
        done = [t for t, m in ckpts.items() if "wer" in m]
        midway = [t for t, m in ckpts.items() if "wer" not in m]
        return (done[0], midway[0]) if done and midway else None

    # the two faults, each when its moment comes: polled together, so neither waits for the other
    down = back = None
    killed_at: dict = {}
    deadline = time.time() + 900
    while not (killed_at and back):
        assert time.time() < deadline, f"U:\n{u.tail()}\nK:\n{k.tail()}"
        if down is None and latest_checkpoints(u_base):  # U's trials are training
            server.stop(signal.SIGTERM)
            down = time.time()
        if down and not back and time.time() - down >= OUTAGE_S:
            mlflow_server(started, tmp_path, port, tmp_path / "mlflow-2.log", wait=False)  # U's client retries
            back = time.time()
        if not killed_at:
            assert k.proc.poll() is None, f"K ended (rc {k.proc.returncode}) before it was killed:\n{k.tail()}"
            moment = first_done_second_midway()
            if moment:
                k.stop()  # kill -9 of the whole sweep: driver, Ray's head processes, the trial drivers and workers
                done, midway = moment
                killed_at = latest_checkpoints(k_base)
        time.sleep(0.05)
    assert "wer" not in killed_at[midway], "the second trial finished before the kill: nothing was interrupted"
    stopped_step = killed_at[midway]["step"]
    assert 2 <= stopped_step < STEPS
    done_files = tree(k_base / "train" / done)
    saved = "TERMINATED" in next((k_base / "tune").glob("experiment_state-*.json")).read_text()

    k2 = started(k_cmd, tmp_path / "K2.log")
    assert k2.wait(900) == 0, k2.tail()
    assert "resuming the sweep" in k2.log.read_text()
    assert u.wait(900) == 0, u.tail()

    # U: the outage cost nothing (no curve point dropped, every run closed and whole)
    u_chatter = u_base / "ray-and-mlflow.log"
    assert not u_chatter.is_file() or "not logged" not in u_chatter.read_text(), (
        f"curve points lost during the {back - down:.0f} s outage"
    )
    u_client = MlflowClient(f"http://127.0.0.1:{port}")
    u_roles = runs_by_role(u_client)
    assert {r: len(v) for r, v in u_roles.items()} == {"sweep": 1, "baseline": 1, "trial": 2}
    assert {r.info.status for v in u_roles.values() for r in v} == {"FINISHED"}
    assert all({"wer", "sim"} <= set(r.data.metrics) for r in u_roles["trial"])

    # determinism and an exact resume: the same figures, to the last digit
    u_rows, k_rows = trial_rows(u_base), trial_rows(k_base)
    assert sorted(u_rows) == sorted(k_rows) == ["0", "0-1"]
    for drop in u_rows:
        assert {f: k_rows[drop][f] for f in SAME} == {f: u_rows[drop][f] for f in SAME}, drop
        assert u_rows[drop]["status"] == "ok"

    # the finished trial was not run again; the interrupted one went on from its checkpoint
    assert sorted(p.name for p in (k_base / "train").iterdir()) == sorted([done, midway])
    assert tree(k_base / "train" / done) == done_files, (
        f"the finished trial's Train run was run again (Tune had saved it as finished before the kill: {saved})"
    )
    trial_id = midway.removeprefix("train-")
    steps = steps_reported(k_base, trial_id)
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, f"steps reported by {trial_id}: {steps}"
    resumed_log = k2.log.read_text()
    assert f"trial {done.removeprefix('train-')} started" not in resumed_log
    assert f"trial {trial_id} step 2/{STEPS}" not in resumed_log  # not trained from the start again

    # MLflow: one sweep run, one baseline run and one run per trial, all closed, none twice
    k_client = MlflowClient(f"sqlite:///{k_root / 'runs' / 'mlflow.db'}")
    roles = runs_by_role(k_client)
    assert {r: len(v) for r, v in roles.items()} == {"sweep": 1, "baseline": 1, "trial": 2}
    assert {r.info.status for v in roles.values() for r in v} == {"FINISHED"}
    trials = roles["trial"]
    assert sorted(r.data.tags["prun_tts.trial_id"] for r in trials) == sorted(
        t.removeprefix("train-") for t in (done, midway)
    )
    for r in trials:
        history = k_client.get_metric_history(r.info.run_id, "wer")
        assert len(history) == 1, f"{r.data.params['dropped_layers']}: wer logged {len(history)} times"
    # the training curves are U's, step for step (U's whole across the outage); a step logged twice
    # has the same value
    k_curves, u_curves = curves(k_client, trials), curves(u_client, u_roles["trial"])
    for drop, points in u_curves.items():
        assert [s for s, _ in points] == list(range(1, STEPS + 1))
        assert sorted(set(k_curves[drop])) == points, drop
    resumed = next(r for r in trials if r.data.tags["prun_tts.trial_id"] == trial_id)
    twice = len(k_curves[resumed.data.params["dropped_layers"]]) - STEPS
    assert twice == 0, f"{twice} training-curve points of the resumed trial were logged twice"


# ------------------------------------------------------------------ 2. Train workers that die


def test_train_workers_that_die_restart_from_the_checkpoint_until_max_failures(tmp_path, started):
    """train.max_failures=1, two layer sets, one trial at a time. The first trial's Train workers
    are killed (as the OOM killer would) mid-training, then their replacements too: two failures,
    so the trial fails, FAILED in MLflow with its error and "error" in trials.csv. The sweep goes
    on: the second trial's workers are killed once, Ray Train starts new ones from its last
    checkpoint, and it finishes with each training step logged once. The command exits 1."""
    cmd = sweep_cmd(
        tmp_path,
        "sweep.space=layer_sets",
        "sweep.layer_sets=['0','1-2']",
        "sweep.local_cpus=3",
        "sweep.max_concurrent_trials=1",
        "train.max_failures=1",
    )
    sweep = started(cmd, tmp_path / "sweep.log")
    base = tmp_path / "sweeps" / NAME
    killed: set[int] = set()

    def new_workers():  # the two Train workers of the running trial, none already killed
        workers = [p for p in sweep.members() if "RayTrainWorker" in " ".join(_cmdline(p)) and p.pid not in killed]
        return workers if len(workers) == 2 else None

    def kill(workers):
        for p in workers:
            killed.add(p.pid)
            p.kill()

    def training(runs=None, after: int = 0):
        """A trial (of `runs`, else any) has a checkpoint past step `after` and two live workers: mid-training."""
        ckpts = latest_checkpoints(base)
        ready = [r for r, m in ckpts.items() if (runs is None or r in runs) and m["step"] > after and "wer" not in m]
        return ready and new_workers() and ready[0]

    failed_run = wait_until(training, 900, "the first trial's first checkpoint", sweep)
    kill(new_workers())
    first_kill_at = latest_checkpoints(base)[failed_run]["step"]  # read after the kill: no later one comes
    # its restarted workers, once they train on from the checkpoint: the second failure
    wait_until(lambda: training([failed_run], first_kill_at), 900, "the first trial's restarted workers", sweep)
    kill(new_workers())
    restarted_run = wait_until(
        lambda: training([r for r in latest_checkpoints(base) if r != failed_run]),
        900,
        "the second trial's first checkpoint",
        sweep,
    )
    kill(new_workers())  # its one failure: Train restarts it from the checkpoint
    rc = sweep.wait(900)
    out = sweep.log.read_text()
    assert rc == 1, sweep.tail()

    failed_id, restarted_id = failed_run.removeprefix("train-"), restarted_run.removeprefix("train-")
    rows = trial_rows(base)
    assert sorted(rows) == ["0", "1-2"]
    failed = next(r for r in rows.values() if r["trial_id"] == failed_id)
    restarted = next(r for r in rows.values() if r["trial_id"] == restarted_id)
    assert failed["status"] == "error" and failed["error"], failed
    assert restarted["status"] == "ok" and float(restarted["wer"]) >= 0, restarted  # the sweep went on
    assert f"1 trial(s) failed (dropped layers {failed['dropped_layers']})" in out
    assert f"trial {failed_id} FAILED" in out and f"trial {restarted_id} FAILED" not in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    roles = runs_by_role(client)
    assert {r: len(v) for r, v in roles.items()} == {"sweep": 1, "baseline": 1, "trial": 2}
    by_trial = {r.data.tags["prun_tts.trial_id"]: r for r in roles["trial"]}
    assert by_trial[failed_id].info.status == "FAILED"
    assert by_trial[failed_id].data.tags.get("prun_tts.error"), by_trial[failed_id].data.tags
    assert by_trial[restarted_id].info.status == "FINISHED" and "wer" in by_trial[restarted_id].data.metrics
    assert roles["sweep"][0].info.status == "FINISHED" and roles["baseline"][0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(by_trial[restarted_id].info.run_id, "train/loss")]
    assert steps == list(range(1, STEPS + 1)), steps  # every step once: none lost, none logged twice
    reported = steps_reported(base, restarted_id)
    assert reported == sorted(set(reported)) and reported[-1] == STEPS, reported  # on from the checkpoint


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def test_an_fsdp_trial_whose_workers_die_resumes_from_its_shards(tmp_path, started):
    """train.strategy=fsdp, one trial: its two Train workers (each holding half the student) are
    killed mid-training; Ray Train starts new ones, which read both workers' shards back from the
    last checkpoint and train on from its step to a whole student. (That the resumed student is the
    uninterrupted one, on any number of workers, is test_fsdp's.)"""
    cmd = sweep_cmd(
        tmp_path, "sweep.space=layer_sets", "sweep.layer_sets=['0']", "sweep.local_cpus=3", "train.strategy=fsdp"
    )
    sweep = started(cmd, tmp_path / "sweep.log")
    base = tmp_path / "sweeps" / NAME

    def workers():
        found = [p for p in sweep.members() if "RayTrainWorker" in " ".join(_cmdline(p))]
        return found if len(found) == 2 else None

    def training():
        ckpts = latest_checkpoints(base)
        ready = [m for m in ckpts.values() if 0 < m["step"] < STEPS - 2 and "wer" not in m]
        return ready and workers() and ready[0]

    wait_until(training, 900, "the trial's first checkpoint", sweep)
    killed = {p.pid for p in workers()}
    for p in workers():
        p.kill()
    new = wait_until(lambda: (w := workers()) and all(p.pid not in killed for p in w) and w, 600, "new workers", sweep)
    assert len(new) == 2
    ((run, latest),) = latest_checkpoints(base).items()  # read after the kill: no later one comes
    killed_at = latest["step"]
    assert sweep.wait(900) == 0, sweep.tail()

    (row,) = trial_rows(base).values()
    assert row["status"] == "ok" and float(row["wer"]) >= 0, row
    trial_id = run.removeprefix("train-")
    reported = steps_reported(base, trial_id)
    assert reported == sorted(set(reported)) and reported[-1] == STEPS, reported
    assert killed_at in reported  # reported before the kill, once: the new workers went on from there
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (trial,) = runs_by_role(client)["trial"]
    steps = [m.step for m in client.get_metric_history(trial.info.run_id, "train/loss")]
    assert steps == list(range(1, STEPS + 1)), steps  # every step once
    student = Path(client.download_artifacts(trial.info.run_id, "student", str(tmp_path / "student")))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(student).config.num_hidden_layers == 3


def test_an_asha_sweep_with_more_trials_than_fit_at_once_finishes(tmp_path, started):
    """ASHA on a 2-CPU private cluster, one trial at a time: the trial it stops loses its Train
    controller, and Ray Train's PlacementGroupCleaner frees its workers' placement group (it needs
    the State API: the private Ray keeps its dashboard), so the trials after it start and finish
    (ray-project/ray issue 54305: without the dashboard, the next trial waited forever)."""
    cmd = sweep_cmd(
        tmp_path,
        "sweep.local_cpus=2",
        "train.num_workers=1",
        "prune.ratio=[0.25,0.5,0.75]",
        "sweep.scheduler=asha",
        "sweep.asha_metric=loss",
        "sweep.asha_grace=1",
        "train.report_every=1",
        "distill.epochs=3",
    )
    sweep = started(cmd, tmp_path / "sweep.log")
    assert sweep.wait(1200) == 0, sweep.tail()
    base = tmp_path / "sweeps" / NAME
    rows = trial_rows(base)
    status = sorted(r["status"] for r in rows.values())
    assert len(rows) == 3 and set(status) == {"ok", "stopped"}, rows  # none left waiting, none failed
    stopped = [r["trial_id"] for r in rows.values() if r["status"] == "stopped"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    by_trial = {r.data.tags["prun_tts.trial_id"]: r for r in runs_by_role(client)["trial"]}
    assert all(by_trial[t].info.status == "KILLED" for t in stopped)
    assert all(by_trial[r["trial_id"]].info.status == "FINISHED" for r in rows.values() if r["status"] == "ok")
