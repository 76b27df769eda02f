"""Gateway: one replica of the HTTP API, serving ``runtime.api`` on a shared port.

Replicas bind the same host and port with ``SO_REUSEPORT``, so the kernel spreads new
connections over them and any one can die without the others noticing. A replica keeps
nothing that another replica or a restart needs: jobs, money and webhook receipts live
in the ledger.

Slow clients are timed out (``[gateway]``): aiohttp closes a connection idle for
``idle_timeout`` (one that never sends a byte too), ``runtime.api.limits``'s guard one
whose request head takes longer than ``header_timeout``, and the API a body slower than
``body_timeout`` (408; what is left of it is drained for at most as long).
"""

from __future__ import annotations

from aiohttp import web

from runtime.api import GatewayContext, build_app
from runtime.api.limits import GuardedSite, SlowClientGuard
from runtime.telemetry import Family, get_logger

log = get_logger("gateway")

SHUTDOWN_TIMEOUT = 5.0  # seconds open requests get to finish when the replica stops


class Gateway:
    def __init__(self, ctx: GatewayContext, host: str, port: int) -> None:
        self.ctx = ctx
        self.host = host
        self.port = port  # the bound port once started (port 0 picks a free one)
        self._runner: web.AppRunner | None = None
        self.guard: SlowClientGuard | None = None

    async def start(self) -> int:
        """Serve the API; returns the bound port. Starting twice is a no-op."""
        if self._runner is not None:
            return self.port
        gateway = self.ctx.config.gateway
        self.guard = SlowClientGuard(gateway.header_timeout)
        runner = web.AppRunner(
            build_app(self.ctx, guard=self.guard),
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            keepalive_timeout=gateway.idle_timeout,
            # A body the handler did not read (a refusal) is drained at most this long.
            lingering_time=gateway.body_timeout,
        )
        await runner.setup()
        try:
            site = GuardedSite(runner, self.host, self.port, self.guard)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = _bound_port(runner, self.port)
        self.ctx.metrics.up.set(1)
        log.info("gateway listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("gateway stopped")

    async def collect_metrics(self) -> list[Family]:
        return self.ctx.metrics.collect()

    async def ping(self) -> bool:
        return self._runner is not None


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        # IPv4 (host, port) and IPv6 (host, port, flow, scope) both put the port second.
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested
