"""Server-sent events: every status change of a job until it ends (``GET
/v1/jobs/{id}/events``), resumable with ``Last-Event-ID`` (ids opaque to the account:
``runtime.api.event_ids``).

A stream polls the job row through the coalesced reader (shared by every stream on this
gateway) and reads the job's history only when the row changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from runtime import strict_json
from runtime.api.context import Api, job_fields, log
from runtime.api.event_ids import EventIds
from runtime.errors import LedgerUnavailable
from runtime.models import Job, JobHistoryEntry
from runtime.telemetry import TRACE_HEADER

SSE_GRACE_AFTER_DEADLINE = 60.0  # a stream outlives its job's deadline by at most this


class EventRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.ids = EventIds(api.ctx.admin_token)

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/jobs/{id}/events", self.job_events, allow_head=False)]

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        account_id = await self.api.account(request)
        with self.api.streams.stream(account_id):  # 429 past event_streams_per_account
            return await self._job_events(request, account_id)

    async def _job_events(self, request: web.Request, account_id: str) -> web.StreamResponse:
        job = await self.api.owned_job(request.match_info["id"], account_id)
        sent = self.ids.decode(job.account_id, request.headers.get("Last-Event-ID", "")[:64])
        after_seq = sent or 0  # not an id of ours: the job's whole history
        if job.terminal and not await self.api.read(self.api.ctx.ledger.history(job.id, after_seq)):
            # Ended, and the client has every event: 204 is what makes a browser's
            # EventSource stop reconnecting (an empty 200 has it back every few seconds).
            return web.Response(status=204, headers={TRACE_HEADER: job.trace_id})
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                TRACE_HEADER: job.trace_id,
            }
        )
        await response.prepare(request)
        try:
            await self._stream_events(request, response, job, after_seq)
        except ConnectionError:
            pass  # the client went away
        except LedgerUnavailable as exc:
            log.warning("event stream ended: %s", exc, extra=job_fields(job))
        return response

    async def _stream_events(
        self, request: web.Request, response: web.StreamResponse, job: Job, after_seq: int
    ) -> None:
        """Write every history entry after ``after_seq``; return after the terminal one."""
        api = self.api
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + api.sse_heartbeat_interval
        seen: tuple[Any, ...] | None = None
        while True:
            if _change_marker(job) != seen:
                seen = _change_marker(job)
                async with api.bounded_read(job.account_id, refuse=False):
                    entries = await api.read(api.ctx.ledger.history(job.id, after_seq))
                for entry in entries:
                    if entry.status.terminal:
                        latest = await api.job(job.id)
                        await _send_event(response, entry, self._id(job, entry), latest or job)
                        return
                    await _send_event(response, entry, self._id(job, entry), None)
                    after_seq = entry.seq
                if job.terminal:  # resumed after the terminal event: nothing more to come
                    return
            if api.closing.is_set() or _gone(request):
                return
            if api.ctx.clock.time() > job.deadline + SSE_GRACE_AFTER_DEADLINE:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(api.closing.wait(), api.sse_poll_interval)
            if loop.time() >= next_heartbeat:
                await response.write(b": heartbeat\n\n")
                next_heartbeat = loop.time() + api.sse_heartbeat_interval
            async with api.bounded_read(job.account_id, refuse=False):
                latest = await api.job(job.id)
            if latest is None:
                return
            job = latest

    def _id(self, job: Job, entry: JobHistoryEntry) -> str:
        return self.ids.encode(job.account_id, entry.seq)


def _change_marker(job: Job) -> tuple[Any, ...]:
    """Differs whenever the job's row changed (and so maybe its history)."""
    return (job.updated_at, job.status, job.attempts, job.vendor_task_id)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _send_event(
    response: web.StreamResponse, entry: JobHistoryEntry, event_id: str, terminal_job: Job | None
) -> None:
    data: dict[str, Any] = {
        "job_id": entry.job_id,
        "event_id": event_id,
        "status": entry.status.value,
        "at": entry.at,
        "detail": entry.detail,
    }
    if terminal_job is not None:
        data["job"] = terminal_job.to_api()
    payload = strict_json.dumps(data, separators=(",", ":"))
    await response.write(f"id: {event_id}\nevent: status\ndata: {payload}\n\n".encode())
