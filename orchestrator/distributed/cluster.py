"""The one way a command starts or joins Ray: `ray_cluster(address)` joins the cluster at
`address` (a Ray job's own RAY_ADDRESS included), else starts a private local Ray that it
stops afterwards. Inside it, a ConfigError met in a Ray task (a missing piece on a worker)
reaches the user as its message, not as Ray's traceback.
"""

from __future__ import annotations

import contextlib
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
        ray.init(
            address=address or "local",
            num_cpus=None if address else num_cpus,
            include_dashboard=False if not address else None,
            log_to_driver=log_to_driver,
            configure_logging=configure_logging,
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
