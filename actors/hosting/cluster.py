"""Joining or starting Ray, the nodes and actors as Ray reports them, and the record the
cluster keeps of each app (where its ledger is, since when, whether it was stopped)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Any, cast

from actors.hosting import ray_calls
from runtime.config import JoblineConfig
from runtime.errors import DeploymentError
from runtime.telemetry import get_logger
from runtime.tracing import OTLP_ENV, PATH_ENV

log = get_logger("hosting")


APP = "app"
PUBLIC_ENV = (*OTLP_ENV, "OTEL_SDK_DISABLED", PATH_ENV)  # never OTEL_EXPORTER_OTLP_HEADERS
READY_TIMEOUT = 120.0  # seconds every role gets to start
STOP_TIMEOUT = 30.0  # seconds each step of a stop gets
RECONCILE_INTERVAL = 3.0  # seconds between the app's looks at the nodes and roles
NOTICE_FLUSH = 0.3  # seconds between a role's sends of its notices to the app
NOTICES_KEPT = 5000
START_BACKOFF = 2.0  # seconds before the second Ray start-up attempt, doubling


def retried_calls(role: str) -> bool:
    """Whether Ray sends a role's calls again to its restarted actor (``max_task_retries``):
    every role's but a gateway's (its calls are reads a caller can make again)."""
    return not role.startswith("gateway-")


def actor_name(role: str) -> str:
    return f"jobline-{role}"


# --- connecting ---------------------------------------------------------------------------


def local_resources(config: JoblineConfig) -> dict[str, float]:
    """What a Ray that jobline starts itself offers: every role fits on its one node."""
    processors = {k: v * len(config.vendors) for k, v in config.ray.processor_resources.items()}
    return {config.ray.ledger_resource: 1.0, config.ray.gateway_resource: 1.0, **processors}


def connect(config: JoblineConfig, address: str | None = None, *, attempts: int = 0) -> bool:
    """Join the cluster at ``address`` (else ``[ray] address``), or start a private local
    Ray offering jobline's resources when both are empty. True if this process started
    Ray (it goes when this process does). A start-up that times out is tried again,
    ``attempts`` (else ``[ray] start_attempts``) times in all; DeploymentError when none
    succeeds."""
    if ray_calls.is_connected():
        return False
    target = join_address(config, address)
    namespace = config.ray.namespace

    def start() -> None:
        if target:
            ray_calls.join(target, namespace)
        else:  # never a cluster someone else started on this machine
            ray_calls.start_local(local_resources(config), namespace=namespace)

    start_with_retries(start, attempts or config.ray.start_attempts)
    return not target


def disconnect() -> None:
    """Leave the Ray cluster this process joined (a Ray it started goes with it)."""
    ray_calls.shutdown()


def join_address(config: JoblineConfig, address: str | None) -> str:
    """The cluster to join; "" (or "local") for a Ray of our own."""
    target = address if address is not None else config.ray.address
    return "" if target == "local" else target


def start_with_retries(
    start: Callable[[], object],
    attempts: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    cleanup: Callable[[], None] = ray_calls.shutdown,
) -> None:
    """``start()``, again after a start-up that timed out (``cleanup()`` between
    attempts), up to ``attempts`` times; DeploymentError naming the last failure."""
    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except Exception as exc:
            reason = one_line(exc)
            if not _timed_out(exc) or attempt == attempts:
                tried = f" after {attempt} attempts" if attempt > 1 else ""
                raise DeploymentError((f"Ray did not start{tried}: {reason}",)) from None
            delay = START_BACKOFF * 2 ** (attempt - 1)
            log.warning(
                "Ray start-up timed out (attempt %d of %d), again in %.0fs: %s",
                attempt,
                attempts,
                delay,
                reason,
            )
            with contextlib.suppress(Exception):
                cleanup()
            sleep(delay)


def _timed_out(exc: BaseException) -> bool:
    text = str(exc).lower()
    return (
        isinstance(exc, TimeoutError | ConnectionError)
        or "timed out" in text
        or ("timeout" in text)
    )


def one_line(exc: BaseException) -> str:
    """The last meaningful line of an error (Ray's carry their whole traceback)."""
    cause = ray_calls.remote_cause(exc)
    if cause is not None and cause is not exc:
        return one_line(cause)
    if isinstance(exc, DeploymentError):
        return "; ".join(exc.lines())
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def public_env() -> dict[str, str]:
    return {name: os.environ[name] for name in PUBLIC_ENV if name in os.environ}


def app_actors(namespace: str) -> list[str]:
    """The names of every jobline actor alive in ``namespace``."""
    return sorted(name for name in ray_calls.named_actors(namespace) if name.startswith("jobline-"))


# --- the deployment record ------------------------------------------------------------------


def _record_key(namespace: str) -> bytes:
    return f"jobline:{namespace}:deployment".encode()


def read_record(namespace: str) -> dict[str, Any] | None:
    """What this Ray cluster remembers of the app ``namespace``: where its ledger is."""
    raw = ray_calls.kv_get(_record_key(namespace))
    return None if raw is None else cast(dict[str, Any], json.loads(raw))


def write_record(namespace: str, record: dict[str, Any]) -> None:
    ray_calls.kv_put(_record_key(namespace), json.dumps(record).encode())


def ledger_expectation(config: JoblineConfig) -> str | None:
    """Why the ledger must already exist, from this cluster's record of the app."""
    record = read_record(config.ray.namespace)
    if record is None:
        return None
    database = str(config.storage.database)
    if record["database"] != database:
        raise DeploymentError(
            (
                f"app {config.ray.namespace!r} keeps its ledger at {record['database']} on this "
                f"Ray cluster, but the config names {database}: point [storage] database at "
                "the ledger, or move the file there while jobline is stopped",
            )
        )
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["first_served"]))
    return f"app {config.ray.namespace!r} has run on this Ray cluster with it since {since}"
