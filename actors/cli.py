"""The ``jobline`` command's product half: run the runtime and operate it.

    jobline serve          run jobline on Ray (a local Ray, or deploy onto a cluster)
    jobline status | logs | stop | init     the app's lifecycle (``actors.lifecycle``)
    jobline accounts create --name N --credits C
    jobline dead-letters list | redrive JOB_ID
    jobline check          run the invariant checker on a ledger file

The console script ``jobline`` is ``loadtests.cli:main``: it builds this parser and adds
the harness's commands (demo, chaos, fake-vendors). ``python -m actors.cli`` offers the
product's commands alone. Commands import what they need when they run, so
``jobline --help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.lifecycle import add_lifecycle_commands
from runtime.config import DEFAULT_CONFIG_PATH, JoblineConfig, load_config
from runtime.errors import ConfigError, DeploymentError


@dataclass
class Cli:
    """The argument parser and its commands; the harness adds commands of its own."""

    parser: argparse.ArgumentParser
    common: argparse.ArgumentParser  # --config, accepted after the command too
    _commands: argparse._SubParsersAction[argparse.ArgumentParser]
    _by_name: dict[str, argparse.ArgumentParser]

    def add(self, name: str, help: str) -> argparse.ArgumentParser:
        command = self._commands.add_parser(name, parents=[self.common], help=help)
        self._by_name[name] = command
        return command

    def command(self, name: str) -> argparse.ArgumentParser:
        return self._by_name[name]

    def run(self, argv: list[str] | None = None) -> int:
        args = self.parser.parse_args(argv)
        if not hasattr(args, "run"):
            self.parser.print_help()
            return 2
        try:
            code: int = args.run(args)
        except (ConfigError, DeploymentError) as exc:
            for line in exc.lines():  # every problem, one line each
                print(f"jobline: {line}", file=sys.stderr)
            return 2 if isinstance(exc, ConfigError) else 1
        except KeyboardInterrupt:
            return 130
        return code


def build_cli() -> Cli:
    parser = argparse.ArgumentParser(
        prog="jobline",
        description="A runtime for asynchronous AI-generation jobs on Ray.",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="path to jobline.toml"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="path to jobline.toml"
    )
    cli = Cli(parser, common, parser.add_subparsers(metavar="COMMAND"), {})

    add_lifecycle_commands(lambda name, help: cli.add(name, help=help))

    accounts = cli.add("accounts", help="manage accounts (admin)")
    accounts_sub = accounts.add_subparsers(metavar="ACTION")
    create = accounts_sub.add_parser(
        "create", parents=[common], help="create an account; prints its API key"
    )
    create.add_argument("--name", required=True)
    create.add_argument("--credits", type=int, default=0)
    _add_gateway_args(create)
    create.set_defaults(run=_accounts_create)

    dead = cli.add("dead-letters", help="list or re-drive dead letters (admin)")
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

    check = cli.add("check", help="check the ledger's invariants (I1, I2, I5)")
    check.add_argument("--database", type=Path, help="ledger file (default: from the config)")
    check.set_defaults(run=_check)
    return cli


def main(argv: list[str] | None = None) -> int:
    return build_cli().run(argv)


def _add_gateway_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="gateway URL (default: the config's public_url)")


# --- commands -----------------------------------------------------------------------------


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
