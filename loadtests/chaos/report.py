"""What one chaos scenario did, and whether the invariants held: one screen, or JSON for CI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from runtime.models import Violation


@dataclass
class VendorLoad:
    vendor: str
    highest_in_flight: int
    limit: int
    tasks_created: int


@dataclass
class PaidWork:
    """One vendor's paid work: the fake's own counts next to jobline's."""

    vendor: str
    billable: int  # tasks the fake billed (they started running)
    delivered: int  # succeeded tasks whose output reached jobline (the fake's count)
    wasted: int  # billed and thrown away, as the fake saw it (late orphans included)
    late_orphans: int  # of them: submits in doubt whose task showed itself too late
    jobline_wasted: int | None  # jobline_vendor_wasted_tasks_total, all reasons (None: unknown)
    answers_lost: int = 0  # tasks the fake created whose submit answer it lost
    adopted: int | None = None  # submits in doubt whose task jobline found and used

    def render(self) -> str:
        own = "?" if self.jobline_wasted is None else str(self.jobline_wasted)
        adopted = "?" if self.adopted is None else str(self.adopted)
        return (
            f"  paid work   {self.vendor:<10} billable {self.billable:>3}  delivered "
            f"{self.delivered:>3}  wasted {self.wasted - self.late_orphans:>2} + late orphans "
            f"{self.late_orphans}  (jobline counted {own}); answers lost {self.answers_lost}, "
            f"adopted {adopted}"
        )


@dataclass
class ScenarioReport:
    scenario: str
    seed: int
    replay: str  # the command that runs this scenario with this seed again
    duration: float = 0.0
    submitted: int = 0  # distinct clients (Idempotency-Keys)
    accepted: int = 0  # distinct jobs answered 202
    refused: dict[str, int] = field(default_factory=dict)  # final 4xx answers by status
    completed: int = 0
    failed: int = 0
    canceled: int = 0
    refunds: int = 0  # release entries
    captures: int = 0
    retries: int = 0
    failovers: int = 0
    vendors: list[VendorLoad] = field(default_factory=list)
    paid_work: list[PaidWork] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # what the schedule did, in order
    violations: list[str] = field(default_factory=list)
    error: str | None = None  # the scenario itself broke (set-up, a timeout)

    @property
    def passed(self) -> bool:
        return not self.violations and self.error is None

    def add_violations(self, found: Sequence[Violation]) -> None:
        self.violations.extend(str(v) for v in found)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data

    def render(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        lines = [
            f"chaos {self.scenario} (seed {self.seed}): {verdict} in {self.duration:.1f}s",
            f"  jobs        submitted {self.submitted}  accepted {self.accepted}"
            + (f"  refused {self.refused}" if self.refused else ""),
            f"  ended       completed {self.completed}  failed {self.failed}"
            f"  canceled {self.canceled}",
            f"  credits     captures {self.captures}  refunds {self.refunds}",
            f"  recovery    retries {self.retries}  failovers {self.failovers}",
        ]
        for v in self.vendors:
            mark = "ok" if v.highest_in_flight <= v.limit else "EXCEEDED"
            lines.append(
                f"  in flight   {v.vendor:<10} highest {v.highest_in_flight:>3}"
                f" / limit {v.limit:<3} {mark}  ({v.tasks_created} tasks)"
            )
        lines.extend(work.render() for work in self.paid_work)
        if self.faults:
            lines.append("  faults      " + "; ".join(self.faults[:12]))
            if len(self.faults) > 12:
                lines.append(f"              ... {len(self.faults) - 12} more")
        if self.error:
            lines.append(f"  error       {self.error}")
        if self.violations:
            lines.append(f"  VIOLATIONS  {len(self.violations)}")
            lines.extend(f"    {v}" for v in self.violations[:20])
        else:
            lines.append("  invariants  I1-I7 held")
        if not self.passed:
            lines.append(f"  replay      {self.replay}")
        return "\n".join(lines)


def render_summary(reports: Sequence[ScenarioReport], duration: float) -> str:
    failed = [r for r in reports if not r.passed]
    lines = [
        "",
        f"chaos: {len(reports)} runs in {duration:.0f}s, "
        f"{len(reports) - len(failed)} passed, {len(failed)} failed, "
        f"{sum(len(r.violations) for r in reports)} violations",
    ]
    width = max((len(r.scenario) for r in reports), default=8)
    for r in reports:
        mark = "ok" if r.passed else "FAILED"
        lines.append(
            f"  {r.scenario:<{width}}  seed {r.seed:<5} {mark:<6} {r.duration:6.1f}s  "
            f"accepted {r.accepted:>3}  completed {r.completed:>3}  failed {r.failed:>3}  "
            f"canceled {r.canceled:>3}  retries {r.retries:>3}  failovers {r.failovers:>3}  "
            f"wasted {sum(w.wasted - w.late_orphans for w in r.paid_work):>2} "
            f"(+{sum(w.late_orphans for w in r.paid_work)} late orphans)"
        )
    for r in failed:
        lines.append(f"  replay: {r.replay}")
    return "\n".join(lines)


def to_json(reports: Sequence[ScenarioReport], duration: float) -> str:
    return json.dumps(
        {
            "duration": round(duration, 3),
            "passed": all(r.passed for r in reports),
            "violations": sum(len(r.violations) for r in reports),
            "scenarios": [r.to_json() for r in reports],
        },
        indent=2,
    )
