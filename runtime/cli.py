"""The ``jobline`` command.

    jobline serve          run the runtime on Ray until stopped
    jobline demo           the main job on the embedded defaults, with a report
    jobline fake-vendors   serve the fake vendors of jobline.toml
    jobline accounts create --name N --credits C
    jobline dead-letters list | redrive JOB_ID
    jobline check          run the invariant checker on a ledger file
    jobline chaos          chaos scenarios with the full invariant check, and a report

Subcommands import what they need when they run, so ``jobline --help`` is fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from runtime.config import DEFAULT_CONFIG_PATH, JoblineConfig, load_config
from runtime.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"jobline: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobline",
        description="A runtime for asynchronous AI-generation jobs on Ray.",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="path to jobline.toml"
    )
    # --config is accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="path to jobline.toml"
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the runtime on Ray until stopped")
    serve.add_argument("--address", help="join a running Ray cluster (host:port or 'auto')")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="use the fake vendors' development keys and secrets where the environment has none",
    )
    serve.set_defaults(run=_serve)

    demo = sub.add_parser(
        "demo", parents=[common], help="run the main job on the embedded defaults"
    )
    demo.add_argument("--jobs", type=int, default=300, help="how many jobs to submit")
    demo.add_argument("--profile", default="flaky", help="fake vendor preset or profile file")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--data", type=Path, default=Path("data/demo"), help="working directory")
    demo.set_defaults(run=_demo)

    fakes = sub.add_parser(
        "fake-vendors", parents=[common], help="serve the fake vendors named in the config"
    )
    fakes.add_argument("--profile", default="calm", help="preset name or profile file")
    fakes.add_argument("--seed", type=int, default=0)
    fakes.set_defaults(run=_fake_vendors)

    accounts = sub.add_parser("accounts", parents=[common], help="manage accounts (admin)")
    accounts_sub = accounts.add_subparsers(metavar="ACTION")
    create = accounts_sub.add_parser(
        "create", parents=[common], help="create an account; prints its API key"
    )
    create.add_argument("--name", required=True)
    create.add_argument("--credits", type=int, default=0)
    _add_gateway_args(create)
    create.set_defaults(run=_accounts_create)

    dead = sub.add_parser(
        "dead-letters", parents=[common], help="list or re-drive dead letters (admin)"
    )
    dead_sub = dead.add_subparsers(metavar="ACTION")
    dead_list = dead_sub.add_parser("list", parents=[common], help="list dead letters")
    _add_gateway_args(dead_list)
    dead_list.set_defaults(run=_dead_letters_list)
    redrive = dead_sub.add_parser(
        "redrive", parents=[common], help="re-drive a dead-lettered job as a new job"
    )
    redrive.add_argument("job_id")
    _add_gateway_args(redrive)
    redrive.set_defaults(run=_dead_letters_redrive)

    check = sub.add_parser(
        "check", parents=[common], help="check the ledger's invariants (I1, I2, I5)"
    )
    check.add_argument("--database", type=Path, help="ledger file (default: from the config)")
    check.set_defaults(run=_check)

    chaos = sub.add_parser(
        "chaos",
        parents=[common],
        help="break jobline on purpose (scenarios x seeds) and check every invariant",
    )
    chaos.add_argument(
        "--scenario", action="append", help="run only this scenario (repeatable; default: all)"
    )
    chaos.add_argument(
        "--seed", type=int, action="append", help="run with this seed (repeatable; default 1 2 3)"
    )
    chaos.add_argument("--json", action="store_true", help="print the reports as JSON")
    chaos.add_argument("--quick", action="store_true", help="the short subset, one seed")
    chaos.add_argument("--list", action="store_true", help="list the scenarios and exit")
    chaos.add_argument(
        "--broken",
        action="append",
        default=[],
        help="run a deliberately broken build (ignore-slot-limit, double-submit) "
        "to see the checks fail",
    )
    chaos.set_defaults(run=_chaos)
    return parser


def _add_gateway_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="gateway URL (default: the config's public_url)")


# --- commands -----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from actors.hosting import RayRuntime

    config = load_config(args.config)
    if args.dev:
        from runtime.testbed import ensure_dev_secrets

        ensure_dev_secrets(config)
    runtime = RayRuntime.start(config, address=args.address)
    print(f"jobline serving on {config.gateway.public_url} (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    try:
        asyncio.run(wait())
    finally:
        runtime.stop()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from runtime.demo import run_demo

    return asyncio.run(
        run_demo(args.config, jobs=args.jobs, profile=args.profile, seed=args.seed, data=args.data)
    )


def _fake_vendors(args: argparse.Namespace) -> int:
    from vendors_fake.runner import main as fake_main

    argv = ["--config", str(args.config), "--profile", args.profile, "--seed", str(args.seed)]
    return fake_main(argv)


def _accounts_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "credits": args.credits}
    status, answer = _admin_request(args, "POST", "/v1/accounts", body)
    print(json.dumps(answer, indent=2))
    return 0 if status < 300 else 1


def _dead_letters_list(args: argparse.Namespace) -> int:
    status, answer = _admin_request(args, "GET", "/v1/admin/dead-letters")
    print(json.dumps(answer, indent=2))
    return 0 if status < 300 else 1


def _dead_letters_redrive(args: argparse.Namespace) -> int:
    path = f"/v1/admin/dead-letters/{args.job_id}/redrive"
    status, answer = _admin_request(args, "POST", path, {})
    print(json.dumps(answer, indent=2))
    return 0 if status < 300 else 1


def _check(args: argparse.Namespace) -> int:
    from runtime.invariants import check_invariants

    database = args.database or load_config(args.config).storage.database
    if not Path(database).exists():
        print(f"jobline: no ledger at {database}", file=sys.stderr)
        return 2
    violations = check_invariants(database)
    for violation in violations:
        print(violation)
    print(f"{len(violations)} violation(s)")
    return 1 if violations else 0


def _chaos(args: argparse.Namespace) -> int:
    from runtime.chaos.harness import main as chaos_main
    from runtime.chaos.scenarios import SCENARIOS

    if args.list:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<18} {scenario.description}")
        return 0
    return chaos_main(
        args.scenario, args.seed, as_json=args.json, broken=args.broken, quick=args.quick
    )


def _admin_request(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    config: JoblineConfig = load_config(args.config)
    token = config.gateway.admin_token()
    if not token:
        raise ConfigError("environment", config.gateway.admin_token_env, "not set")
    url = (args.url or config.gateway.public_url).rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except urllib.error.URLError as exc:
        print(f"jobline: cannot reach {url}: {exc.reason}", file=sys.stderr)
        return 599, None


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
