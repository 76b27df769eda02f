"""The HTTP API (DESIGN §5) as an aiohttp application, split by resource.

Theory of operation
-------------------
The gateway holds no state of its own: every request becomes ledger operations and
reads (through ``GatewayContext.ledger``) and, for new work, a message to a vendor's
processor (through ``GatewayContext.router``). Any replica can die at any time.

    app.py         build_app: the route modules on one Api core, and the middlewares
    context.py     GatewayContext (injected) and Api (coalesced ledger and processor
                   calls, the API key cache, background tasks, request parsing)
    errors.py      exceptions -> {"error": {"code", "message"}} with a fitting status
    accounts.py    accounts and credits
    jobs.py        submit, read, list, result, cancel
    events.py      server-sent events of a job
    webhooks.py    vendor callbacks: verify, record, forward
    admin.py       the dead-letter queue
    operations.py  /metrics, /healthz, /readyz, /openapi.json
    bodies.py      request bodies and limits (pydantic); schemas.py, openapi.py: the
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
