"""The arguments of ``jobline simulate`` (nothing heavy imported: ``jobline --help`` stays
fast; ``loadtests.sim.command`` runs the command)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path


def _positive(kind: Callable[[str], float], what: str) -> Callable[[str], float]:
    """An argument type: a finite number above 0 (``kind`` reads it), or a clear error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a number of {what} above 0, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="flaky", help="fake vendor preset or profile file")
    parser.add_argument("--traffic", type=Path, help="traffic file (TOML or JSON)")
    parser.add_argument(
        "--rate",
        type=_positive(float, "jobs per second"),
        help="jobs per second (overrides the traffic file)",
    )
    parser.add_argument(
        "--duration", type=_positive(float, "seconds"), help="seconds of arrivals (virtual time)"
    )
    parser.add_argument(
        "--jobs",
        type=_positive(int, "jobs"),
        help="how many jobs (the first of jobs/duration ends)",
    )
    parser.add_argument("--seed", type=int, default=1, help="the run's seed (default 1)")
    parser.add_argument("--faults", default="", help="fault schedule: kind:target@at+length,...")
    parser.add_argument(
        "--broken",
        action="append",
        default=[],
        help="run a deliberately broken build (ignore-slot-limit, double-submit): "
        "its violations must be found",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where report.json and report.png go (default results/simulate-SEED)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--trace", type=Path, help="write every event of the trace to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--explore", action="store_true", help="many short seeded fault schedules (--seeds)"
    )
    parser.add_argument("--seeds", default="1-100", help="with --explore: e.g. 1-1000 or 3,7,9")
    parser.add_argument(
        "--no-shrink", action="store_true", help="with --explore: do not shrink failing schedules"
    )
