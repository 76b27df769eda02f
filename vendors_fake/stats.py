"""What a fake vendor saw, served at ``GET /_control/stats``.

Shape of :meth:`FakeStats.snapshot` (all counts are integers)::

    {
      "requests": {"<route>": {"<status code>" | "hang" | "reset": n}},
      "requests_total": n,
      "trace_id_missing": {"<route>": n},          # vendor requests without X-Jobline-Trace-Id
      "faults": {"<kind>": n},    # injected: outage, hang, reset, rate_limited,
                                  # server_error, concurrency_limited, refused_<status>,
                                  # lost_answer_<hang|server_error|cut_off>
      "tasks": {"created", "succeeded", "failed", "rejected", "canceled", "aborted",
                "never_finish", "expired", "cold_starts", "in_flight", "max_in_flight",
                "billable",      # tasks that started running: the vendor bills them,
                                 # whether they succeeded, failed or were canceled
                "delivered"},    # succeeded tasks whose outputs reached the client:
                                 # every file downloaded in full, or (no files) the
                                 # result read or its webhook delivered
      "concurrency_limit": n | null,
      "webhooks": {"events",                        # events due to subscribers
                   "pending",                       # deliveries not finished yet
                   "sent", "delivered", "failed",   # HTTP deliveries (with duplicates, retries)
                   "retried",                       # deliveries that were a retry
                   "payload_errors",                # fal: payload null + payload_error
                   "by_fault": {"lost", "duplicated", "delayed", "out_of_order",
                                "bad_signature", "stale"}},
      "task_ids": ["<id>", ...],                    # in creation order
      "task_info": {"<id>": {"index", "model", "status", "outcome", "trace_id",
                             "job_id", "attempt", "webhook_url", "billable",
                             "delivered", "ended_at" (wall clock), "answer_lost",
                             "files"}},
      "attempts": {"<job_id>#<attempt>": tasks started for it},
      "duplicate_attempts": ["<job_id>#<attempt>", ...],   # started more than once
      "outage": {"active": bool, "remaining": seconds},
      "seed": n, "uptime": seconds
    }

``failed`` counts every task that ended ``failed``; ``rejected`` is the part of them
that failed permanently (content rejected).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from vendors_fake.tasks import Phase, Task

WEBHOOK_FAULTS = ("lost", "duplicated", "delayed", "out_of_order", "bad_signature", "stale")


class FakeStats:
    def __init__(self) -> None:
        self.requests: dict[str, Counter[str]] = {}
        self.trace_id_missing: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.tasks: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.webhooks: Counter[str] = Counter()
        self.webhook_faults: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()

    def route_counter(self, route: str) -> Counter[str]:
        """The per-code counter of one route; stable across :meth:`clear`."""
        counter = self.requests.get(route)
        if counter is None:  # (not setdefault: it would build a Counter at every request)
            counter = self.requests[route] = Counter()
        return counter

    def clear(self) -> None:
        for counter in self.requests.values():
            counter.clear()
        for counter in (
            self.trace_id_missing,
            self.faults,
            self.tasks,
            self.webhooks,
            self.webhook_faults,
            self.attempts,
        ):
            counter.clear()
        self.in_flight = 0
        self.max_in_flight = 0

    def task_created(self, task: Task) -> None:
        self.tasks["created"] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if task.job_id is not None:
            self.attempts[f"{task.job_id}#{task.attempt}"] += 1

    def task_ended(self, phase: Phase, rejected: bool) -> None:
        self.in_flight -= 1
        self.tasks[phase.value] += 1
        if rejected:
            self.tasks["rejected"] += 1

    def task_started(self) -> None:
        self.tasks["billable"] += 1

    def snapshot(self, tasks: dict[str, Task]) -> dict[str, Any]:
        return {
            "requests": {
                route: dict(codes) for route, codes in sorted(self.requests.items()) if codes
            },
            "requests_total": sum(sum(codes.values()) for codes in self.requests.values()),
            "trace_id_missing": dict(self.trace_id_missing),
            "faults": dict(self.faults),
            "tasks": {
                "created": self.tasks["created"],
                "succeeded": self.tasks[Phase.SUCCEEDED.value],
                "failed": self.tasks[Phase.FAILED.value],
                "rejected": self.tasks["rejected"],
                "canceled": self.tasks[Phase.CANCELED.value],
                "aborted": self.tasks[Phase.ABORTED.value],
                "never_finish": self.tasks["never_finish"],
                "expired": self.tasks["expired"],
                "cold_starts": self.tasks["cold_starts"],
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "billable": self.tasks["billable"],
                "delivered": sum(1 for task in tasks.values() if task.delivered),
            },
            "webhooks": {
                "events": self.webhooks["events"],
                "sent": self.webhooks["sent"],
                "delivered": self.webhooks["delivered"],
                "failed": self.webhooks["failed"],
                "retried": self.webhooks["retried"],
                "payload_errors": self.webhooks["payload_errors"],
                "by_fault": {name: self.webhook_faults[name] for name in WEBHOOK_FAULTS},
            },
            "task_ids": list(tasks),
            "task_info": {
                task.id: {
                    "index": task.index,
                    "model": task.model,
                    "status": task.phase.value,
                    "outcome": task.outcome.value,
                    "trace_id": task.trace_id,
                    "job_id": task.job_id,
                    "attempt": task.attempt,
                    "webhook_url": task.webhook_url,
                    "billable": task.billable,
                    "delivered": task.delivered,
                    "ended_at": task.completed_at,
                    "answer_lost": (
                        task.fate.lost_answer[0].value if task.fate.lost_answer else None
                    ),
                    "files": {
                        name: {"size": file.size, "content_type": file.content_type}
                        for name, file in task.files.items()
                    },
                }
                for task in tasks.values()
            },
            "attempts": dict(self.attempts),
            "duplicate_attempts": sorted(key for key, n in self.attempts.items() if n > 1),
        }
