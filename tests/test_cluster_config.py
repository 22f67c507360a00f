"""The cluster launcher configs pass Ray's own schema, offline, and say what we rely on.

`ray up` has no dry run, so the check is the launcher's own first two steps:
`prepare_config` (merge with the provider's defaults.yaml, turn a local
provider's head_ip/worker_ips into its single node type) then
`validate_config` (ray-schema.json + cross-field rules). Both live in
`ray.autoscaler._private.util`: a private API, which is why Ray is pinned.

Neither step talks to a cloud: for AWS, `prepare_config` only reads
ray/autoscaler/aws/defaults.yaml; the step that calls AWS (key pairs, subnets,
IAM, AMIs) is `bootstrap_config`, which this test never calls. The
`no_network` fixture makes any socket connection fail, so that stays true.
No Ray runtime is started.
"""

import copy
import ipaddress
import re
import socket
import subprocess
from pathlib import Path

import click
import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
AWS = ROOT / "cluster.yaml"
LOCAL = ROOT / "cluster-local.yaml"
MLFLOW_SERVER = (
    "mlflow server --backend-store-uri sqlite:////home/ray/mlflow/mlflow.db "
    "--artifacts-destination /home/ray/mlflow/artifacts --host 0.0.0.0 --port 5000"
)
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert not ray.is_initialized()


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def check(raw: dict) -> dict:
    """What `ray up` does before it contacts anything; raises on a bad config."""
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def auth_modes(commands: list[str]) -> set[str]:
    return set(re.findall(r"RAY_AUTH_MODE=(\w+)", " ".join(commands)))


def the_command(commands: list[str], needle: str) -> str:
    found = [c for c in commands if needle in c]
    assert len(found) == 1, f"expected one command with {needle!r}, got {found}"
    return found[0]


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_config_passes_rays_schema(path):
    raw = load(path)
    prepared = check(raw)
    assert prepared["cluster_name"] == raw["cluster_name"]
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_commands_install_project_start_mlflow_and_state_auth_mode(path):
    raw = load(path)
    assert raw["file_mounts"]["~/prun-tts"] == "."
    assert any(re.search(r"pip install -e ~/prun-tts\b", c) for c in raw["setup_commands"])

    head, workers = raw["head_start_ray_commands"], raw["worker_start_ray_commands"]
    mlflow = the_command(head, "mlflow server")
    assert "nohup" in mlflow and re.search(r"&\s*(fi\s*)?$", mlflow), "MLflow must run in the background"
    assert re.sub(r"\S*/bin/mlflow", "mlflow", " ".join(mlflow.split())).find(MLFLOW_SERVER) >= 0

    head_start = the_command(head, "ray start --head")
    worker_start = the_command(workers, "ray start --address=$RAY_HEAD_IP:6379")
    modes = auth_modes([head_start]) | auth_modes([worker_start])
    assert auth_modes([head_start]) == auth_modes([worker_start]) == modes and len(modes) == 1
    assert modes <= {"token", "disabled"}
    if modes == {"token"}:
        # `ray start` under token auth needs the token on every node.
        assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    # Ray processes log to MLflow on the head.
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head_start
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in worker_start

    # Every command is valid shell (syntax only; nothing runs).
    for cmd in raw["setup_commands"] + head + workers:
        subprocess.run(["bash", "-n", "-c", cmd], check=True)


def test_aws_head_has_no_gpu_and_workers_declare_gpus():
    raw = load(AWS)
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 0) >= 1, "Tune trial drivers need CPUs on the head"
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "head should be a CPU instance"

    workers = {name: t for name, t in types.items() if name != raw["head_node_type"]}
    assert workers
    gpus = {t["node_config"]["InstanceType"]: t["resources"]["GPU"] for t in workers.values()}
    assert gpus == {"g5.xlarge": 1, "g5.12xlarge": 4}
    for t in workers.values():
        assert t["min_workers"] == 0, "GPU nodes should only exist while there is work"
        assert t["max_workers"] <= raw["max_workers"]


def test_local_variant_is_the_documented_shape():
    raw = load(LOCAL)
    assert raw["provider"]["type"] == "local"
    assert "available_node_types" not in raw and "head_node_type" not in raw
    ips = [raw["provider"]["head_ip"], *raw["provider"]["worker_ips"]]
    assert len(set(ips)) == len(ips) >= 2
    for ip in ips:
        assert any(ipaddress.ip_address(ip) in net for net in DOC_NETS), f"{ip} is not a documentation address"
    # MLflow refuses non-private Host headers by default: the head's address must be allowed.
    assert raw["provider"]["head_ip"] in the_command(raw["head_start_ray_commands"], "--allowed-hosts")
    prepared = check(raw)
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"])


# --- the validator has teeth: broken copies are rejected -------------------------


def test_rejects_unknown_top_level_key():
    for path in (AWS, LOCAL):
        raw = load(path)
        raw["head_start_commands"] = ["ray start --head"]  # a typo of head_start_ray_commands
        with pytest.raises(jsonschema.ValidationError, match="head_start_commands"):
            check(raw)


def test_rejects_head_node_type_missing_from_node_types():
    raw = load(AWS)
    del raw["available_node_types"][raw["head_node_type"]]
    with pytest.raises(ValueError, match="head_node_type"):
        check(raw)


def test_rejects_fractional_gpu_declaration():
    raw = load(AWS)
    raw["available_node_types"]["worker.gpu1.a10g"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        check(raw)


def test_rejects_node_types_on_local_provider():
    raw = load(LOCAL)
    raw["available_node_types"] = {"head": {"resources": {}, "node_config": {}}}
    raw["head_node_type"] = "head"
    with pytest.raises(click.ClickException):
        check(raw)


def test_rejects_min_workers_above_global_cap():
    raw = load(AWS)
    raw["available_node_types"]["worker.gpu1.a10g"]["min_workers"] = raw["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        check(raw)
