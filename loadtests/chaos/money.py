"""The chaos suite's money checks, after every scenario: what the vendors cost, and the
refund policy, against the ledger and the fake vendors' own counts.

I1 and I2 (a fee kept is one capture of the fee and one release of the rest, summing
to the hold) are the invariant checker's (``runtime.invariants``). Here:

- **cost figures** (``costs_recorded``): every charge the ledger recorded
  (``vendor_charges``) is at its route step's ``cost`` and names a task the vendor
  itself billed (it started running), for that job and attempt: jobline never counts
  work the vendor did not bill. Every completed job has exactly one ``succeeded``
  charge, on the vendor and attempt that completed it.
- **refund policy** (``refund_policy``): a completed job captures its price; a
  canceled or expired job is released in full; a failed job keeps a fee only if the
  vendor rejected its input (its last task was rejected, or its submit was refused),
  and then exactly the model's fee (``JoblineConfig.input_rejected_fee``); a failed job
  whose last task the vendor rejected keeps exactly that fee.

``money_figures`` sums what a scenario cost for its report.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runtime.config import MICROS, JoblineConfig
from runtime.models import FEE_NOTE, Violation

INVARIANT = "money"


@dataclass(frozen=True)
class Charge:
    job_id: str
    attempt: int
    vendor: str
    model: str  # jobline's model name
    outcome: str
    cost_micros: int


@dataclass(frozen=True)
class Settled:
    """A job as the money checks read it: its status, price, and what was captured."""

    id: str
    model: str
    status: str
    cost: int
    vendor: str
    attempts: int
    captured: int  # every capture of the job
    fee: int  # the captures noted as a fee (FEE_NOTE)
    released: int


@dataclass(frozen=True)
class MoneyFigures:
    vendor_cost: float  # everything the vendors billed, in the route costs' currency
    not_delivered: float  # of it: attempts that did not become a completed job's result
    fees_kept: int  # credits kept as fees on jobs rejected for their input


@contextlib.contextmanager
def _connect(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{quote(str(Path(db).resolve()))}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def read_charges(db: Path) -> list[Charge]:
    with _connect(db) as conn:
        rows = conn.execute(
            "SELECT job_id, attempt, vendor, model, outcome, cost_micros FROM vendor_charges"
        ).fetchall()
    return [Charge(*row) for row in rows]


def read_settled(db: Path) -> dict[str, Settled]:
    with _connect(db) as conn:
        rows = conn.execute(
            """
            SELECT j.id, j.model, j.status, j.cost, j.vendor, j.attempts,
                   TOTAL(e.amount) FILTER (WHERE e.kind = 'capture'),
                   TOTAL(e.amount) FILTER (WHERE e.kind = 'capture' AND e.note = ?),
                   TOTAL(e.amount) FILTER (WHERE e.kind = 'release')
            FROM jobs j LEFT JOIN credit_entries e ON e.job_id = j.id
            GROUP BY j.id
            """,
            (FEE_NOTE,),
        ).fetchall()
    return {
        row[0]: Settled(
            row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), int(row[7]), int(row[8])
        )
        for row in rows
    }


def _tasks(fakes: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The fakes' tasks by (vendor, job id, attempt)."""
    tasks = {}
    for vendor, stats in fakes.items():
        for info in stats.get("task_info", {}).values():
            if info.get("job_id") is None or info.get("attempt") is None:
                continue
            tasks[(vendor, str(info["job_id"]), int(str(info["attempt"])))] = dict(info)
    return tasks


def _step_costs(config: JoblineConfig) -> dict[tuple[str, str], int]:
    return {
        (name, step.vendor): step.cost_micros
        for name, model in config.models.items()
        for step in model.route
    }


def costs_recorded(
    config: JoblineConfig,
    fakes: Mapping[str, Mapping[str, Any]],
    charges: Iterable[Charge],
    settled: Mapping[str, Settled],
) -> Iterator[Violation]:
    """The cost figures (module docstring)."""
    costs = _step_costs(config)
    tasks = _tasks(fakes)
    succeeded: dict[str, list[Charge]] = defaultdict(list)
    for charge in charges:
        subject = f"{charge.job_id}#{charge.attempt}"
        want = costs.get((charge.model, charge.vendor))
        if charge.cost_micros != want:
            yield Violation(
                INVARIANT, subject, f"charged {charge.cost_micros} micros on {charge.vendor}, "
                f"its route step costs {want}",
            )  # fmt: skip
        task = tasks.get((charge.vendor, charge.job_id, charge.attempt))
        if task is None or not task.get("billable"):
            yield Violation(
                INVARIANT, subject, f"{charge.outcome} charge on {charge.vendor} for a task "
                "the vendor did not bill" + (" (none)" if task is None else ""),
            )  # fmt: skip
        if charge.outcome == "succeeded":
            succeeded[charge.job_id].append(charge)
    for job in settled.values():
        found = succeeded.get(job.id, [])
        if job.status == "completed":
            if len(found) != 1:
                yield Violation(INVARIANT, job.id, f"completed with {len(found)} succeeded charges")
            elif (found[0].vendor, found[0].attempt) != (job.vendor, job.attempts):
                yield Violation(
                    INVARIANT, job.id, f"completed by {job.vendor} attempt {job.attempts}, "
                    f"charged to {found[0].vendor} attempt {found[0].attempt}",
                )  # fmt: skip
        elif found:
            yield Violation(INVARIANT, job.id, f"{job.status} with a succeeded charge")


def refund_policy(
    config: JoblineConfig,
    fakes: Mapping[str, Mapping[str, Any]],
    settled: Mapping[str, Settled],
) -> Iterator[Violation]:
    """The refund policy (module docstring)."""
    last_task: dict[str, tuple[int, dict[str, Any]]] = {}
    for (_, job_id, attempt), info in _tasks(fakes).items():
        if job_id not in last_task or attempt > last_task[job_id][0]:
            last_task[job_id] = (attempt, info)
    for job in settled.values():
        if job.status in ("queued", "processing"):
            continue
        kept = job.captured if job.status == "completed" else job.fee
        if job.status == "completed" and (job.captured, job.fee) != (job.cost, 0):
            yield Violation(INVARIANT, job.id, f"completed, captured {job.captured} of {job.cost}")
        elif job.status in ("canceled", "expired") and job.captured:
            yield Violation(INVARIANT, job.id, f"{job.status}, yet {job.captured} captured")
        elif job.status == "failed":
            fee = config.input_rejected_fee(job.model, job.cost)
            attempt, task = last_task.get(job.id, (0, {}))
            rejected = task.get("outcome") == "reject" and task.get("status") == "failed"
            refused_submit = attempt < job.attempts  # its last attempt never made a task
            if job.captured != job.fee:
                yield Violation(INVARIANT, job.id, f"failed, {job.captured} captured not as a fee")
            elif kept and not (rejected or refused_submit):
                yield Violation(
                    INVARIANT, job.id, f"a fee of {kept} kept, but the vendor did not reject it"
                )
            elif kept and kept != fee:
                yield Violation(INVARIANT, job.id, f"a fee of {kept} kept; the policy says {fee}")
            elif rejected and attempt == job.attempts and kept != fee:
                yield Violation(
                    INVARIANT, job.id, f"its input was rejected: a fee of {fee} due, {kept} kept"
                )


def money_figures(charges: Iterable[Charge], settled: Mapping[str, Settled]) -> MoneyFigures:
    total = lost = 0
    for charge in charges:
        total += charge.cost_micros
        if charge.outcome != "succeeded":
            lost += charge.cost_micros
    fees = sum(job.fee for job in settled.values())
    return MoneyFigures(total / MICROS, lost / MICROS, fees)


def money_check(
    config: JoblineConfig, fakes: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Violation], MoneyFigures]:
    """Every money violation after a scenario, and its figures."""
    db = config.storage.database
    charges, settled = read_charges(db), read_settled(db)
    found = [*costs_recorded(config, fakes, charges, settled)]
    found += refund_policy(config, fakes, settled)
    return found, money_figures(charges, settled)
