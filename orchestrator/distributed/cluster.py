"""The one way a command starts or joins Ray: `ray_cluster(address)` joins the cluster at
`address` (a Ray job's own RAY_ADDRESS included), else starts a private local Ray that it
stops afterwards. Inside it, a ConfigError met in a Ray task (a missing piece on a worker)
reaches the user as its message, not as Ray's traceback.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import ray

from orchestrator.config import ConfigError
from orchestrator.console import stop_on_sigterm


@contextlib.contextmanager
def ray_cluster(
    address: str | None,
    num_cpus: int | None = None,
    log_to_driver: bool = True,
    configure_logging: bool = True,
    started_hook: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Ray for the block. `num_cpus`: a private Ray's logical CPUs (ignored when joining);
    `started_hook`: run right after `ray.init` (which resets Ray's logger)."""
    started = not ray.is_initialized()
    if started:
        # a private Ray keeps its dashboard, on a free local port: it serves the State API, by which
        # Ray Train's PlacementGroupCleaner sees that a stopped trial's Train controller is gone and
        # frees its workers' placement group (without it a trial ASHA stopped kept its CPUs for good)
        private = {}
        if not address:
            port = free_port()
            # ...and its workers are told where that dashboard is: the State API otherwise looks for
            # "the" local Ray, and fails where another Ray runs on the same machine
            env = {"RAY_ADDRESS": f"http://127.0.0.1:{port}"}
            private = dict(
                include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, runtime_env={"env_vars": env}
            )
        ray.init(
            address=address or "local",
            num_cpus=None if address else num_cpus,
            log_to_driver=log_to_driver,
            configure_logging=configure_logging,
            **private,
        )
        if started_hook:
            started_hook()
        stop_on_sigterm()  # ray.init installs a SIGTERM handler that aborts with a stack dump
    try:
        yield
    except ray.exceptions.RayTaskError as e:  # a missing piece met inside a task: its message, not Ray's trace
        if isinstance(e.cause, ConfigError):
            raise e.cause from None
        raise
    finally:
        if started:
            ray.shutdown()


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_memory(use_gpu: bool, cpus_per_worker: float) -> int:
    """The memory one Train worker can count on: a GPU's (asked of a task on one), else its node's
    Ray `memory` shared by CPU among the workers the node can hold (the smallest such share)."""
    if use_gpu:

        @ray.remote(num_gpus=1, num_cpus=0)
        def gpu_bytes() -> int:
            import torch

            return torch.cuda.get_device_properties(0).total_memory

        return ray.get(gpu_bytes.remote())
    shares = [
        n["Resources"]["memory"] * cpus_per_worker / n["Resources"]["CPU"]
        for n in ray.nodes()
        if n["Alive"] and n["Resources"].get("CPU", 0) >= cpus_per_worker and n["Resources"].get("memory")
    ]
    return int(min(shares))
