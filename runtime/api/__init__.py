"""The HTTP API (DESIGN §5) as an aiohttp application, split by resource.

Theory of operation
-------------------
The gateway holds no state of its own: every request becomes ledger operations and
reads (through ``GatewayContext.ledger``) and, for new work, a message to a vendor's
processor (through ``GatewayContext.router``). Any replica can die at any time.

    app.py         build_app: the route modules on one Api core, and the middlewares
    context.py     GatewayContext (injected) and Api (coalesced ledger and processor
                   calls, background tasks, request parsing)
    auth.py        API keys: the cache, the revocation feed, failed attempts per address
    limits.py      expensive reads per account; the slow-client guard and its site
    errors.py      exceptions -> {"error": {"code", "message"}} with a fitting status
    accounts.py    accounts, credits, per-account limits
    keys.py        API keys: list, create, rotate, revoke (the account's own, the admin's)
    jobs.py        submit, read, list, result, cancel
    events.py      server-sent events of a job
    webhooks.py    vendor callbacks: verify, record, forward
    admin.py       the dead-letter queue
    operations.py  /metrics, /healthz, /readyz, /openapi.json
    bodies.py      request bodies and limits (pydantic); schemas.py, openapi*.py: the
                   OpenAPI document built from the same models
"""

from runtime.api.app import GATEWAY_API, ROUTE_MODULES, build_app
from runtime.api.context import Api, GatewayContext
from runtime.api.webhooks import WEBHOOK_ANSWER_WITHIN

__all__ = [
    "GATEWAY_API",
    "ROUTE_MODULES",
    "WEBHOOK_ANSWER_WITHIN",
    "Api",
    "GatewayContext",
    "build_app",
]
