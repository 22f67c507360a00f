"""The real thing, as a user runs it: a Ray head node and a second node joined to it, an
MLflow server with a sqlite store, and the mini sweep submitted with `ray job submit`
(2 trials, 2 Train workers each). Checked through MLflow's REST API.

The test stops exactly the processes it started (each started in its own process group;
never a machine-wide Ray shutdown, which would end every Ray process on the machine).
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import TINY_WORLD, free_port
from mlflow_checks import check_listening_and_registry

pytestmark = pytest.mark.slow(minutes=3)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Started:
    """Processes this test started, each leading its own process group."""

    def __init__(self, env: dict):
        self.env = env
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen:
        p = subprocess.Popen(
            args, env=self.env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(p)
        return p

    def stop(self) -> None:
        groups = [p.pid for p in self.procs]
        members = [q for q in psutil.process_iter(["pid"]) if _pgid(q.pid) in groups]
        for pg in reversed(groups):
            _signal_group(pg, signal.SIGTERM)
        _, alive = psutil.wait_procs(members, timeout=20)
        for pg in groups:
            _signal_group(pg, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def wait_for(check, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as r:
        return r.status == 200


def alive_nodes(dashboard: str) -> int:
    with urllib.request.urlopen(f"{dashboard}/nodes?view=summary", timeout=5) as r:
        nodes = json.loads(r.read())["data"]["summary"]
    return sum(1 for n in nodes if n["raylet"]["state"] == "ALIVE")


def mlflow_api(base: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body else "GET",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def submit_sweep(cluster, env_vars: dict, sets: list[str], timeout: float) -> subprocess.CompletedProcess:
    """The README's `ray job submit ... -- python jobs/sweep.py --config configs/mini.yaml [--set ...]`."""
    runtime_env = {
        "env_vars": {"HF_HUB_OFFLINE": "1", **env_vars},
        "excludes": [".venv", ".git", "runs", ".cache", "*.egg-info"],
    }
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(ROOT)]
    cmd += [
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "python",
        "jobs/sweep.py",
        "--config",
        "configs/mini.yaml",
    ]
    for s in sets:
        cmd += ["--set", s]
    for _ in range(12):  # a loaded machine: the head's job agent registers after the dashboard answers
        r = subprocess.run(cmd, env=cluster["env"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in r.stderr:
            return r
        time.sleep(5)  # what Ray's message asks for ("please try again later")
    return r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head (4 logical CPUs) + a second node (4), and an MLflow server, on free ports
    (started once for this file's jobs)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.pop("RAY_ADDRESS", None)
    started = Started(env)
    gcs, dash, mlflow_port = free_port(), free_port(), free_port()
    temp = Path(f"/tmp/prt-{os.getpid()}")  # short: Ray's socket paths must fit in 107 bytes
    try:
        started.start(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={gcs}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus=4",
                "--num-gpus=0",
                f"--dashboard-port={dash}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--temp-dir={temp}",
                "--disable-usage-stats",
            ],
            tmp_path / "head.log",
        )
        started.start(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--artifacts-destination",
                str(tmp_path / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            tmp_path / "mlflow.log",
        )
        wait_for(lambda: http_ok(f"http://127.0.0.1:{dash}/api/version"), 120, "the Ray head's dashboard")
        if os.environ.get("PRT_SECOND_NODE", "1") == "1":
            # its own temp dir: two nodes sharing one session directory lose the job's working directory
            started.start(
                [
                    str(BIN / "ray"),
                    "start",
                    "--block",
                    f"--address=127.0.0.1:{gcs}",
                    "--node-ip-address=127.0.0.1",
                    "--num-cpus=4",
                    "--num-gpus=0",
                    f"--temp-dir={temp}-2",
                ],
                tmp_path / "worker.log",
            )
            wait_for(lambda: alive_nodes(f"http://127.0.0.1:{dash}") == 2, 120, "the second Ray node")
            time.sleep(5)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{mlflow_port}/health"), 120, "the MLflow server")
        yield {
            "env": env,
            "dashboard": f"http://127.0.0.1:{dash}",
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "tmp": tmp_path,
            "gcs": f"127.0.0.1:{gcs}",
        }
    finally:
        started.stop()
        subprocess.run(["rm", "-rf", str(temp), f"{temp}-2"])
        current = Path("/tmp/ray/ray_current_cluster")  # left behind by our head; remove it only if it is ours
        if current.is_file() and str(gcs) in current.read_text():
            current.unlink()


def test_sweep_submitted_as_a_ray_job_logs_parent_baseline_and_trials(cluster):
    tmp = cluster["tmp"]
    sets = TINY_WORLD + [
        f"world.teacher.path={tmp / 'no-teacher'}",
        f"output_dir={tmp / 'runs'}",
        f"sweep.storage_path={tmp / 'sweeps'}",
        f"tracking.uri={cluster['mlflow']}",
        "prune.ratio=[0.25, 0.5]",
        "prune.scorer=[wli]",
        "train.num_workers=2",
        # one trial at a time: each is 2 Train workers, their Ray Data readers and Train's dataset
        # manager, and the suite's other worker runs two sweeps at once beside this (24 GiB in all)
        "sweep.max_concurrent_trials=1",
        "train.report_every=2",
        "distill.data_fraction=0.5",
        "distill.batch_size=4",
        "distill.epochs=1",
    ]
    r = submit_sweep(cluster, {"PRUN_TTS_CACHE": str(tmp / "cache")}, sets, 900)
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-3000:]
    assert "trade-off" in r.stdout and cluster["mlflow"] in r.stdout

    exp = mlflow_api(cluster["mlflow"], "experiments/get-by-name?experiment_name=prun-tts")["experiment"]
    runs = mlflow_api(cluster["mlflow"], "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})[
        "runs"
    ]

    def tags(run):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    def params(run):
        return {p["key"]: p["value"] for p in run["data"].get("params", [])}

    def metrics(run):
        return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}

    by_role = {}
    for run in runs:
        by_role.setdefault(tags(run).get("prun_tts.role"), []).append(run)
    assert len(by_role["sweep"]) == 1 and len(by_role["baseline"]) == 1 and len(by_role["trial"]) == 2
    parent = by_role["sweep"][0]["info"]["run_id"]
    for run in by_role["baseline"] + by_role["trial"]:
        assert tags(run)["mlflow.parentRunId"] == parent
        assert {"dropped_layers", "kept_layers", "scorer", "ratio"} <= set(params(run))
        m = metrics(run)
        assert {"wer", "sim", "n_layers", "params_m", "rtf", "speedup", "wer_delta", "sim_delta"} <= set(m)
    teacher = metrics(by_role["baseline"][0])
    assert teacher["n_layers"] == 4
    depths = sorted(metrics(run)["n_layers"] for run in by_role["trial"])
    assert depths == [2, 3]  # ratios 0.5 and 0.25 of 4 layers
    for run in by_role["trial"]:
        p, m = params(run), metrics(run)
        assert len(p["dropped_layers"].split("-")) + len(p["kept_layers"].split("-")) == 4
        assert m["wer_delta"] == pytest.approx(m["wer"] - teacher["wer"])
        assert m["params_m"] < teacher["params_m"]
        curve = mlflow_api(
            cluster["mlflow"], f"metrics/get-history?run_id={run['info']['run_id']}&metric_key=train/loss"
        )
        assert len(curve["metrics"]) >= 2  # a training curve, one point per step
        arts = mlflow_api(cluster["mlflow"], f"artifacts/list?run_id={run['info']['run_id']}")
        assert {"student", "evaluation.json"} <= {f["path"] for f in arts.get("files", [])}
    check_listening_and_registry(cluster["mlflow"], tmp / "downloads")
    arts = mlflow_api(cluster["mlflow"], f"artifacts/list?run_id={parent}&path=results")
    assert {"results/trials.csv", "results/pareto.png"} <= {f["path"] for f in arts.get("files", [])}

    # the listening page: written by the sweep's last stage and attached to its run, then rebuilt
    # from the MLflow server alone (in another directory), the same bytes
    arts = mlflow_api(cluster["mlflow"], f"artifacts/list?run_id={parent}&path=report")
    assert "report/index.html" in {f["path"] for f in arts.get("files", [])}
    page = tmp / "page"
    cmd = [str(BIN / "prun-tts"), "report", "--run", parent, "--tracking-uri", cluster["mlflow"], "--out", str(page)]
    r = subprocess.run(cmd, env=cluster["env"], cwd=tmp, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"report: {page / 'index.html'}" in r.stdout

    def digests(folder: Path) -> dict:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    assert digests(page) == digests(tmp / "sweeps" / "mini-sweep" / "report")
    (section,) = json.loads((page / "results.json").read_text())["sections"]
    # every figure on the page is what MLflow holds: the baseline run's and each trial run's metrics
    for key in ("wer", "sim", "n_layers", "params_m", "peak_mem_mb"):
        assert section["teacher"][key] == pytest.approx(teacher[key]), key
    by_layers = {params(run)["dropped_layers"]: metrics(run) for run in by_role["trial"]}
    assert sorted(s["dropped_layers"] for s in section["students"]) == sorted(by_layers)
    for s in section["students"]:
        for key in ("wer", "sim", "n_layers", "params_m", "speedup", "wer_delta", "peak_mem_mb"):
            assert s[key] == pytest.approx(by_layers[s["dropped_layers"]][key]), key
    chosen = next(s for s in section["students"] if s["trial_id"] == section["chosen"])
    k, m = section["key_results"], by_layers[chosen["dropped_layers"]]
    assert m["n_layers"] == min(x["n_layers"] for x in by_layers.values())
    assert k["depth_reduction"] == pytest.approx(1 - m["n_layers"] / teacher["n_layers"])
    assert k["peak_memory_reduction"] == pytest.approx(1 - m["peak_mem_mb"] / teacher["peak_mem_mb"])
    assert k["wer_delta"] == pytest.approx(m["wer"] - teacher["wer"]) and k["speedup"] == pytest.approx(m["speedup"])


def test_readme_job_with_relative_paths_on_two_nodes_is_refused_saying_what_to_set(cluster):
    """The README's command as written (relative storage and output paths): on one node they land
    under ~/prun-tts; this cluster has two nodes that share no home, so the job stops at once,
    naming the settings, and writes nothing."""
    home = cluster["tmp"] / "home"
    home.mkdir()
    r = submit_sweep(cluster, {"PRUN_TTS_CACHE": str(cluster["tmp"] / "cache"), "HOME": str(home)}, [], 600)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "this cluster has 2 nodes" in out and "sweep.storage_path=/mnt/shared/sweeps" in out, out[-3000:]
    assert "Traceback" not in out
    # nothing of the sweep's under the job's home; importing MLflow and matplotlib leaves their own
    # caches under ~/.cache and ~/.config (font list, telemetry id), as they do for any program
    written = [p.relative_to(home) for p in home.rglob("*") if p.is_file()]
    assert not (home / "prun-tts").exists() and all(p.parts[0] in (".cache", ".config") for p in written), written
