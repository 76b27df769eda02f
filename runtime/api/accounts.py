"""Accounts and credits: create an account (admin), grant credits (admin), set an
account's limits and see or clear its input-rejection throttle (admin), the balance and
the statement (the account's own API key)."""

from __future__ import annotations

import re
import secrets

from aiohttp import web

from runtime.api.auth import key_hash
from runtime.api.bodies import (
    CURSOR_PATTERN,
    DEFAULT_STATEMENT_PAGE,
    MAX_STATEMENT_PAGE,
    REPLAYED_HEADER,
    CreateAccountBody,
    GrantBody,
    LimitsBody,
)
from runtime.api.context import Api, log
from runtime.api.errors import bad_request, json_response
from runtime.api.params import int_param, only_params
from runtime.config import GatewayConfig
from runtime.fairness import DEFAULT_WEIGHT
from runtime.models import (
    AccountLimits,
    AccountThrottle,
    ClearThrottle,
    CreateAccount,
    Grant,
    SetAccountLimits,
)

_CURSOR = re.compile(CURSOR_PATTERN)
KEY_PREFIX_LENGTH = 10  # "jl_" and 7 characters: enough to tell keys apart, never to guess one


def new_api_key() -> tuple[str, str]:
    """(a new API key, its prefix). A credential: from ``secrets``, never a seeded rng."""
    api_key = "jl_" + secrets.token_urlsafe(32)
    return api_key, api_key[:KEY_PREFIX_LENGTH]


def new_key_id(api: Api) -> str:
    return "key_" + api.ctx.rng.getrandbits(96).to_bytes(12, "big").hex()


class AccountRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/accounts", self.create_account),
            web.post("/v1/accounts/{id}/credits", self.grant_credits),
            web.get("/v1/accounts/{id}/limits", self.get_limits, allow_head=False),
            web.put("/v1/accounts/{id}/limits", self.set_limits),
            web.get("/v1/accounts/{id}/throttle", self.get_throttle, allow_head=False),
            web.delete("/v1/accounts/{id}/throttle", self.clear_throttle),
            web.get("/v1/credits", self.get_credits, allow_head=False),
            web.get("/v1/credits/entries", self.get_credit_entries, allow_head=False),
        ]

    async def create_account(self, request: web.Request) -> web.Response:
        api = self.api
        await api.require_admin(request)
        body, _ = await api.json_body(request, CreateAccountBody)
        account_id = "acct_" + api.ctx.rng.getrandbits(96).to_bytes(12, "big").hex()
        api_key, prefix = new_api_key()
        op = CreateAccount(
            account_id,
            key_hash(api_key),
            body.name,
            credits=body.credits,
            key_id=new_key_id(api),
            key_prefix=prefix,
        )
        balance = (await api.execute(op)).unwrap()
        log.info("account created", extra={"account_id": account_id})
        return json_response(
            {
                "account_id": account_id,
                "name": body.name,
                "api_key": api_key,
                "credits": balance.available,
            },
            status=201,
        )

    async def grant_credits(self, request: web.Request) -> web.Response:
        api = self.api
        await api.require_admin(request)
        account_id = request.match_info["id"]
        header_key = api.idempotency_key(request)
        body, _ = await api.json_body(request, GrantBody)
        grant_id = body.grant_id or header_key or f"{api.ctx.rng.getrandbits(128):032x}"
        outcome = await api.execute(Grant(account_id, body.amount, grant_id))
        balance = outcome.unwrap()
        # A replay answers exactly what the first request answered, and says so.
        headers = {} if outcome.changed else {REPLAYED_HEADER: "true"}
        return json_response(
            {"account_id": account_id, **balance.to_api(), "granted": True}, headers=headers
        )

    async def get_limits(self, request: web.Request) -> web.Response:
        api = self.api
        await api.require_admin(request)
        limits = await api.read(api.ctx.ledger.account_limits(request.match_info["id"]))
        return json_response(limits_to_api(limits, api.ctx.config.gateway))

    async def set_limits(self, request: web.Request) -> web.Response:
        api = self.api
        await api.require_admin(request)
        account_id = request.match_info["id"]
        body, _ = await api.json_body(request, LimitsBody)
        limits = AccountLimits(
            account_id,
            body.max_jobs_in_flight,
            body.submits_per_second,
            body.submit_burst,
            body.slot_weight,
        )
        outcome = await api.execute(SetAccountLimits(limits))
        api.refusals.forget(account_id)
        log.info("account limits set", extra={"account_id": account_id})
        return json_response(limits_to_api(outcome.unwrap(), api.ctx.config.gateway))

    async def get_throttle(self, request: web.Request) -> web.Response:
        """The account's input rejections lately and whether its submits are refused."""
        api = self.api
        await api.require_admin(request)
        throttle = await api.read(api.ctx.ledger.account_throttle(request.match_info["id"]))
        return json_response(throttle_to_api(throttle, api))

    async def clear_throttle(self, request: web.Request) -> web.Response:
        """Lift the account's throttle and forget its input rejections (idempotent)."""
        api = self.api
        await api.require_admin(request)
        account_id = request.match_info["id"]
        throttle = (await api.execute(ClearThrottle(account_id))).unwrap()
        api.refusals.forget(account_id)
        log.info("account throttle cleared", extra={"account_id": account_id})
        return json_response(throttle_to_api(throttle, api))

    async def get_credits(self, request: web.Request) -> web.Response:
        account_id = await self.api.account(request)
        balance = await self.api.read(self.api.ctx.ledger.balance(account_id))
        return json_response({"account_id": account_id, **balance.to_api()})

    async def get_credit_entries(self, request: web.Request) -> web.Response:
        api = self.api
        account_id = await api.account(request)
        query = only_params(request, "limit", "cursor", "order")
        limit = int_param(query, "limit", DEFAULT_STATEMENT_PAGE, MAX_STATEMENT_PAGE)
        cursor = query.get("cursor")
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise bad_request("cursor must be the next_cursor of an earlier page")
        order = query.get("order", "asc")
        if order not in ("asc", "desc"):
            raise bad_request("order must be asc (oldest first) or desc (newest first)")
        async with api.bounded_read(account_id):
            page = await api.read(
                api.ctx.ledger.statement(account_id, limit, cursor, order == "desc")
            )
        return json_response(
            {
                "account_id": account_id,
                "entries": [entry.to_api() for entry in page.items],
                "next_cursor": page.next_cursor,
            }
        )


def throttle_to_api(throttle: AccountThrottle, api: Api) -> dict[str, object]:
    """The throttle as the admin reads it: the level of its leaky bucket now, against the
    ``[throttle]`` limit, and until when submits are refused (null: they are not)."""
    now = api.ctx.clock.time()
    policy = api.ctx.config.throttle.policy()
    until = throttle.throttled_until
    return {
        "account_id": throttle.account_id,
        "input_rejections": round(
            policy.level_at(throttle.input_rejections, throttle.updated_at, now), 3
        ),
        "limit": policy.limit,
        "window": policy.window,
        "throttled_until": until if until is not None and until > now else None,
    }


def limits_to_api(limits: AccountLimits, defaults: GatewayConfig) -> dict[str, object]:
    """The account's own limits (null: the default) and the limits in force."""
    own = {
        "max_jobs_in_flight": limits.max_jobs_in_flight,
        "submits_per_second": limits.submits_per_second,
        "submit_burst": limits.submit_burst,
        "slot_weight": limits.slot_weight,
    }
    default = {
        "max_jobs_in_flight": defaults.max_jobs_in_flight_per_account,
        "submits_per_second": defaults.submits_per_second_per_account,
        "submit_burst": defaults.submit_burst_per_account,
        "slot_weight": DEFAULT_WEIGHT,
    }
    effective = {name: default[name] if value is None else value for name, value in own.items()}
    return {"account_id": limits.account_id, "limits": own, "effective": effective}
