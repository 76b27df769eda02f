"""The ``jobline`` console script: the product's commands plus the harness's.

    jobline serve [--dev]  run the runtime on Ray (--dev: the fakes' development secrets)
    jobline demo           the main job on the embedded defaults, with a report
    jobline fake-vendors   serve the fake vendors of jobline.toml
    jobline chaos          chaos scenarios with the full invariant check, and a report
    jobline simulate       the runtime on virtual time: a capacity report, or --explore

and the operator's commands of ``actors.cli`` (accounts, dead-letters, check). The
harness may import everything; the product never imports it. Commands import what they
need when they run, so ``jobline --help`` is fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from actors.cli import Cli, build_cli
from actors.lifecycle import serve_command
from runtime.config import JoblineConfig


def build_harness_cli() -> Cli:
    cli = build_cli()
    serve = cli.command("serve")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="use the fake vendors' development keys and secrets where the environment has none",
    )
    serve.set_defaults(run=_serve)

    demo = cli.add("demo", help="run the main job on the embedded defaults")
    demo.add_argument("--jobs", type=int, default=300, help="how many jobs to submit")
    demo.add_argument("--profile", default="flaky", help="fake vendor preset or profile file")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--data", type=Path, default=Path("data/demo"), help="working directory")
    demo.set_defaults(run=_demo)

    fakes = cli.add("fake-vendors", help="serve the fake vendors named in the config")
    fakes.add_argument("--profile", default="calm", help="preset name or profile file")
    fakes.add_argument("--seed", type=int, default=0)
    fakes.set_defaults(run=_fake_vendors)

    chaos = cli.add(
        "chaos", help="break jobline on purpose (scenarios x seeds) and check every invariant"
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

    simulate = cli.add(
        "simulate",
        help="run jobline on virtual time against in-memory vendors: a capacity report, "
        "or --explore many seeded fault schedules",
    )
    from loadtests.sim.arguments import add_arguments

    add_arguments(simulate)
    simulate.set_defaults(run=_simulate)
    return cli


def main(argv: list[str] | None = None) -> int:
    return build_harness_cli().run(argv)


def _serve(args: argparse.Namespace) -> int:
    if not args.dev:
        return serve_command(args)
    from loadtests.testbed import ensure_dev_secrets

    def prepare(config: JoblineConfig) -> None:
        name = config.gateway.admin_token_env
        made_up = not os.environ.get(name)
        ensure_dev_secrets(config)
        if made_up:  # the operator needs it for every admin call
            print(
                f"jobline: --dev: {name} was not set; the admin token is {os.environ[name]}",
                file=sys.stderr,
                flush=True,
            )

    return serve_command(args, prepare=prepare)


def _demo(args: argparse.Namespace) -> int:
    from loadtests.demo import run_demo

    return asyncio.run(
        run_demo(args.config, jobs=args.jobs, profile=args.profile, seed=args.seed, data=args.data)
    )


def _fake_vendors(args: argparse.Namespace) -> int:
    from vendors_fake.runner import main as fake_main

    argv = ["--config", str(args.config), "--profile", args.profile, "--seed", str(args.seed)]
    return fake_main(argv)


def _chaos(args: argparse.Namespace) -> int:
    from loadtests.chaos.harness import main as chaos_main
    from loadtests.chaos.scenarios import SCENARIOS

    if args.list:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<18} {scenario.description}")
        return 0
    return chaos_main(
        args.scenario, args.seed, as_json=args.json, broken=args.broken, quick=args.quick
    )


def _simulate(args: argparse.Namespace) -> int:
    from loadtests.sim.command import run_command

    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
