"""The app's lifecycle from the command line: ``jobline serve | status | logs | stop | init``.

    jobline serve                       a local Ray of its own; the app until Ctrl-C
    jobline serve --address auto        deploy onto the cluster this node belongs to, then
                                        follow it (Ctrl-C leaves it running); --detach: return
    jobline status [--json]             every role, its node, restarts and readiness
    jobline logs [-f]                   the recent notices of every role (and follow them)
    jobline stop                        drain, stop, close and checkpoint the ledger, remove
    jobline init                        create the ledger's database, once, on its node

Before Ray starts, ``serve`` checks what it can on its own: the whole config (every
wrong key named), on one machine every secret variable (named at once, one line each),
on a cluster that every path is absolute. Exit codes: 0 done, 1 failed (a supervisor
starts it again), 2 wrong config or environment, 3 the app already runs / does not run.

On one machine ``serve`` owns its Ray: it writes ``<database>.serve.json`` beside the
ledger (Ray's address, its own pid) so that ``status``, ``logs`` and ``stop`` find it,
and removes it when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from runtime.config import JoblineConfig, load_config
from runtime.errors import AppAlreadyRunning, AppNotRunning, DeploymentError
from runtime.startup import (
    ledger_problems,
    missing_environment,
    path_problems,
    resolve_paths,
)
from runtime.telemetry import configure_logging, get_logger, readable

if TYPE_CHECKING:
    from actors.hosting import RayRuntime

log = get_logger("serve")

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_APP = 3
# Seconds each look for new notices may wait (a notice ends the wait at once, a signal
# within a second):
# a follower costs the app one call per this many seconds while nothing happens. Below
# the app's FOLLOWER_SEEN (5 s), so a follower waiting for notices counts as following.
FOLLOW_WAIT = 4.0
SERVE_EXIT_WAIT = 60.0  # seconds `stop` waits for a local `serve` to end
SERVE_START_WAIT = 120.0  # seconds `status` / `stop` wait for a local `serve` to start


def add_lifecycle_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    serve = add("serve", "run jobline on Ray: a local Ray of its own, or a cluster's")
    _address_arg(serve)
    serve.add_argument(
        "--detach",
        action="store_true",
        help="on a cluster: return once every role is ready (the app runs on)",
    )
    serve.add_argument(
        "--attach",
        action="store_true",
        help="on a cluster where the app already runs: follow it instead of refusing "
        "(for a supervisor that restarts this process, e.g. a pod's container)",
    )
    serve.set_defaults(run=serve_command)

    status = add("status", "every role of the app: its node, restarts and readiness")
    _address_arg(status)
    status.add_argument("--json", action="store_true", help="print it as JSON")
    status.set_defaults(run=status_command)

    logs = add("logs", "the recent notices of every role (roles ready, circuits, failures)")
    _address_arg(logs)
    logs.add_argument("-f", "--follow", action="store_true", help="keep following them")
    logs.set_defaults(run=logs_command)

    stop = add("stop", "drain the gateways, stop every role, close and checkpoint the ledger")
    _address_arg(stop)
    stop.set_defaults(run=stop_command)

    init = add("init", "create the ledger's database (once, on the ledger's node)")
    init.add_argument("--database", type=Path, help="ledger file (default: from the config)")
    init.set_defaults(run=init_command)


def _address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        help="the Ray cluster (host:port, or 'auto' for the one this node belongs to); "
        "default: [ray] address",
    )


def _say(line: str) -> None:
    _print(f"jobline: {line}", sys.stderr)


_STDOUT = sys.stdout


def _out(line: str) -> None:
    """A line of the command's own output (``_quiet_ray`` keeps Ray's out of stdout)."""
    _print(line, _STDOUT)


def _print(line: str, stream: TextIO) -> None:
    """``line`` on ``stream``; a stream whose reader is gone (a pipe closed: ``| tee``
    ended by the same Ctrl-C) is sent to /dev/null from then on, so that the command goes
    on with what it was doing (stopping the app) instead of dying of BrokenPipeError."""
    try:
        print(line, file=stream, flush=True)
    except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


def _quiet_ray() -> None:
    """Ray's driver prints cluster events (``(raylet) ...``) on ``sys.stdout``; they go to
    stderr, so that stdout holds what the command prints (``status --json`` parses)."""
    global _STDOUT
    if sys.stdout is not sys.stderr:
        _STDOUT = sys.stdout
        sys.stdout = sys.stderr


# --- serve --------------------------------------------------------------------------------


def serve_command(
    args: argparse.Namespace, prepare: Callable[[JoblineConfig], None] | None = None
) -> int:
    """Check, deploy the app, then follow it until Ctrl-C / SIGTERM (or return at once
    with ``--detach``). ``prepare`` sees the config first (``--dev``: secrets)."""
    config = load_config(args.config)
    if prepare is not None:
        prepare(config)
    address = args.address if args.address is not None else config.ray.address
    address = "" if address == "local" else address  # "local": a Ray of its own
    joining = bool(address)
    if joining:
        problems = [f"{args.config}: {key}: {reason}" for key, reason in path_problems(config)]
    else:
        config = resolve_paths(config, Path.cwd())
        problems = missing_environment(config, os.environ) + ledger_problems(config)
        if not problems:
            from runtime.results_s3 import bucket_problems

            problems = bucket_problems(config.storage)
        if args.detach:
            problems.append(
                "--detach needs a Ray cluster to leave jobline on (`ray start --head ...`, "
                "then `jobline serve --address auto --detach`)"
            )
    if problems:
        for line in problems:
            _say(line)
        return EXIT_CONFIG
    configure_logging(
        config.logging.level, role="serve", file=config.logging.file, readable_stderr=True
    )
    run_file = _run_file(config)
    with contextlib.ExitStack() as owned:
        if not joining:
            try:
                owned.enter_context(_ServeLock(run_file, config.ray.namespace))
            except AppAlreadyRunning as exc:
                _say(exc.lines()[0])
                return EXIT_APP
        return _deploy_and_follow(args, config, address, run_file)
    raise AssertionError("unreachable")  # pragma: no cover


def _deploy_and_follow(
    args: argparse.Namespace, config: JoblineConfig, address: str, run_file: Path
) -> int:
    _quiet_ray()
    from actors.hosting import RayRuntime

    try:
        runtime = RayRuntime.start(config, address=address or None)
    except AppAlreadyRunning as exc:
        if not (args.attach and address):
            _say(exc.lines()[0])
            return EXIT_APP
        _say(f"app {config.ray.namespace!r} already runs on the cluster: following it")
        runtime = RayRuntime.attach(config, address)
    except DeploymentError as exc:
        for line in exc.lines():
            _say(line)
        return EXIT_FAILED
    log.info("app %r deployed on Ray %s", config.ray.namespace, runtime.cluster_address)
    if runtime.owns_ray:
        record = {
            "pid": os.getpid(),
            "namespace": config.ray.namespace,
            "address": runtime.cluster_address,
            "auth_mode": os.environ.get("RAY_AUTH_MODE", ""),
        }
        _write_run_file(run_file, record)
    try:
        for line in _status_lines(runtime):
            _out(line)
        if args.detach:
            name = config.ray.namespace
            _say(
                f"app {name!r} runs on the cluster: `jobline status`, `jobline logs -f`, "
                "`jobline stop`"
            )
            return 0
        return _follow(runtime)
    finally:
        run_file.unlink(missing_ok=True)


def _follow(runtime: RayRuntime) -> int:
    """Print every notice until the app stops (0), is lost (1) or a signal comes: the
    app stops with a Ray of our own, and runs on on a cluster (0). A signal ends a look
    that is waiting for notices within a second (``RayRuntime.notices``'s ``give_up``)."""
    signalled: list[int] = []

    def on_signal(number: int, frame: FrameType | None) -> None:
        signalled.append(number)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)
    name = runtime.config.ray.namespace
    after = 0
    follower = f"{socket.gethostname()}:{os.getpid()}"  # a stop waits until it has the last notice
    while not signalled:
        try:
            after, lines, stopped = runtime.notices(
                after, FOLLOW_WAIT, follower, give_up=lambda: bool(signalled)
            )
        except Exception as exc:
            if _stopped_on_purpose(runtime):
                _say(f"app {name!r} was stopped")
                return 0
            _say(f"lost app {name!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
            return EXIT_FAILED
        for notice in lines:
            _out(readable(notice))
        if stopped:
            _say(f"app {name!r} was stopped")
            return 0
    if runtime.owns_ray:
        _say(f"stopping app {name!r}")
        for step in runtime.stop(follower):
            _say(step)
        return 0
    _say(f"app {name!r} runs on on the cluster; `jobline stop` stops it")
    return 0


def _stopped_on_purpose(runtime: RayRuntime) -> bool:
    from actors.hosting import read_record

    try:
        record = read_record(runtime.config.ray.namespace)
    except Exception:
        return False
    return record is not None and record.get("stopped") is not None


def _status_lines(runtime: RayRuntime) -> list[str]:
    from actors.placement import render_status

    return render_status(runtime.config.ray.namespace, runtime.cluster_address, runtime.status())


# --- finding a running app ----------------------------------------------------------------


def _run_file(config: JoblineConfig) -> Path:
    database = config.storage.database
    return database.with_name(database.name + ".serve.json")


class _ServeLock:
    """One local ``serve`` per ledger: an exclusive lock on ``<database>.lock`` for the
    life of ``serve`` (the kernel drops it when the process dies, however it dies)."""

    def __init__(self, run_file: Path, namespace: str) -> None:
        self._run_file = run_file
        self._namespace = namespace
        self._path = run_file.with_name(run_file.name.removesuffix(".serve.json") + ".lock")
        self._fd = -1

    def __enter__(self) -> _ServeLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            pid = "?"
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = json.loads(self._run_file.read_text(encoding="utf-8"))["pid"]
            where = f"on this machine with this ledger (`jobline serve`, pid {pid})"
            raise AppAlreadyRunning(self._namespace, where) from None
        _write_run_file(self._run_file, {"pid": os.getpid(), "namespace": self._namespace})
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._run_file.unlink(missing_ok=True)
        os.close(self._fd)


def _write_run_file(path: Path, record: dict[str, object]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record), encoding="utf-8")
    partial.replace(path)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs. A zombie (it exited; its parent, e.g. a shell or
    a supervisor, has not collected its status yet) does not: ``stop`` would otherwise wait
    its whole ``SERVE_EXIT_WAIT`` for a ``serve`` that is gone. Its state is read from
    ``/proc/<pid>/stat`` (Linux, proc(5)); without ``/proc`` the signal test decides."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # gone since the signal test, or no /proc to ask
        return not Path("/proc/self").is_dir()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _locate(args: argparse.Namespace) -> tuple[JoblineConfig, str, int | None]:
    """The config, the Ray address of the app, and the pid of a local ``serve`` (None on a
    cluster). AppNotRunning if no local ``serve`` runs and no cluster is named."""
    config = load_config(args.config)
    address = args.address if args.address is not None else config.ray.address
    if address:
        return config, address, None
    config = resolve_paths(config, Path.cwd())
    run_file = _run_file(config)
    deadline = time.monotonic() + SERVE_START_WAIT
    while True:
        try:
            record = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise AppNotRunning(
                config.ray.namespace, f"no `jobline serve` runs on this machine: no {run_file}"
            ) from None
        if not _pid_alive(int(record["pid"])):
            raise AppNotRunning(
                config.ray.namespace, f"`jobline serve` (pid {record['pid']}) is gone: {run_file}"
            )
        if "address" in record:
            break
        if time.monotonic() > deadline:  # its Ray is still starting
            raise AppNotRunning(
                config.ray.namespace, f"`jobline serve` (pid {record['pid']}) is still starting"
            )
        time.sleep(0.5)
    if record.get("auth_mode"):
        os.environ.setdefault("RAY_AUTH_MODE", record["auth_mode"])
    return config, str(record["address"]), int(record["pid"])


def _attach(args: argparse.Namespace) -> tuple[RayRuntime, int | None]:
    config, address, pid = _locate(args)
    # Only now: importing Ray reads RAY_AUTH_MODE, which _locate may have set.
    _quiet_ray()
    from actors.hosting import RayRuntime

    return RayRuntime.attach(config, address), pid


# --- status, logs, stop, init -------------------------------------------------------------


def status_command(args: argparse.Namespace) -> int:
    try:
        runtime, _ = _attach(args)
    except AppNotRunning as exc:
        _say(exc.lines()[0])
        return EXIT_APP
    rows = runtime.status()
    if args.json:
        _out(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        for line in _status_lines(runtime):
            _out(line)
    return 0 if rows and all(row.ready for row in rows) else EXIT_FAILED


def logs_command(args: argparse.Namespace) -> int:
    try:
        runtime, _ = _attach(args)
    except AppNotRunning as exc:
        _say(exc.lines()[0])
        return EXIT_APP
    if args.follow:
        return _follow(runtime)
    _, lines, _ = runtime.notices(0, 0)
    for line in lines:
        _out(readable(line))
    return 0


def stop_command(args: argparse.Namespace) -> int:
    try:
        config, address, serve_pid = _locate(args)
    except AppNotRunning as exc:
        _say(f"{exc.lines()[0]}: nothing to stop")
        return 0
    # Only now: importing Ray reads RAY_AUTH_MODE, which _locate may have set.
    _quiet_ray()
    from actors.hosting import RayRuntime, connect, disconnect, remove_leftovers

    connect(config, address, attempts=1)
    try:
        runtime = RayRuntime.attach(config)
    except AppNotRunning as exc:
        removed = remove_leftovers(config.ray.namespace)
        tail = f"; removed what was left of it: {', '.join(removed)}" if removed else ""
        _say(f"{exc.lines()[0]}{tail}")
        return 0
    name = config.ray.namespace
    _say(f"stopping app {name!r}")
    for line in runtime.stop():
        _say(line)
    disconnect()  # before a local serve takes its Ray away
    if serve_pid is not None:
        deadline = time.monotonic() + SERVE_EXIT_WAIT
        while _pid_alive(serve_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    _say(f"app {name!r} stopped")
    return 0


def init_command(args: argparse.Namespace) -> int:
    """Create the ledger (every migration applied, checkpointed) where none is."""
    import asyncio

    from actors.ledger import checkpoint
    from runtime.ledger import Ledger
    from runtime.ledger_schema import ledger_file_problem

    config = resolve_paths(load_config(args.config), Path.cwd())
    database: Path = (args.database or config.storage.database).resolve()
    if database.exists():
        problem = ledger_file_problem(database)
        if problem is not None:
            raise problem
        _say(f"the ledger {database} exists already; left as it is")
        return 0

    async def create() -> None:
        ledger = await Ledger.open(database)
        await ledger.close()

    asyncio.run(create())
    checkpoint(database)
    _say(f"created the ledger {database}")
    return 0
