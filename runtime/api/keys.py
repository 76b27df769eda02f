"""API keys: an account lists, creates, rotates and revokes its own (``/v1/keys``), and the
admin does the same for any account (``/v1/accounts/{id}/keys``).

A key is shown once, when it is made; afterwards only its id, its prefix and its last
use (recorded in batches, up to ``gateway.key_use_flush_interval`` behind). A rotation
is a create that names the key it ``replaces``: the old key is revoked in the same
ledger transaction and keeps working for ``grace_period`` seconds. A revoked key is
refused by this replica at once and by every other within about
``gateway.key_revocation_poll`` seconds (``runtime.api.auth``).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from runtime.api.accounts import new_api_key, new_key_id
from runtime.api.auth import key_hash
from runtime.api.bodies import (
    CURSOR_PATTERN,
    DEFAULT_KEYS_PAGE,
    MAX_API_KEYS,
    MAX_KEYS_PAGE,
    CreateKeyBody,
)
from runtime.api.context import Api, log
from runtime.api.errors import bad_request, json_response
from runtime.api.params import int_param, only_params
from runtime.models import ApiKey, CreateApiKey, RevokeApiKey

_CURSOR = re.compile(CURSOR_PATTERN)


class KeyRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/keys", self.list_own, allow_head=False),
            web.post("/v1/keys", self.create_own),
            web.post("/v1/keys/{id}/revoke", self.revoke_own),
            web.get("/v1/accounts/{id}/keys", self.list_for_account, allow_head=False),
            web.post("/v1/accounts/{id}/keys", self.create_for_account),
            web.post("/v1/accounts/{id}/keys/{key_id}/revoke", self.revoke_for_account),
        ]

    # --- the account's own --------------------------------------------------------------

    async def list_own(self, request: web.Request) -> web.Response:
        return await self._list(request, await self.api.account(request))

    async def create_own(self, request: web.Request) -> web.Response:
        return await self._create(request, await self.api.account(request))

    async def revoke_own(self, request: web.Request) -> web.Response:
        account_id = await self.api.account(request)
        return await self._revoke(account_id, request.match_info["id"])

    # --- the admin's ----------------------------------------------------------------------

    async def list_for_account(self, request: web.Request) -> web.Response:
        await self.api.require_admin(request)
        return await self._list(request, request.match_info["id"])

    async def create_for_account(self, request: web.Request) -> web.Response:
        await self.api.require_admin(request)
        return await self._create(request, request.match_info["id"])

    async def revoke_for_account(self, request: web.Request) -> web.Response:
        await self.api.require_admin(request)
        return await self._revoke(request.match_info["id"], request.match_info["key_id"])

    # --- both -----------------------------------------------------------------------------

    async def _list(self, request: web.Request, account_id: str) -> web.Response:
        api = self.api
        query = only_params(request, "limit", "cursor")
        limit = int_param(query, "limit", DEFAULT_KEYS_PAGE, MAX_KEYS_PAGE)
        cursor = query.get("cursor")
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise bad_request("cursor must be the next_cursor of an earlier page")
        page = await api.read(api.ctx.ledger.api_keys(account_id, limit, cursor))
        if not page.items:
            await api.read(api.ctx.ledger.balance(account_id))  # 404 for an unknown account
        now = api.ctx.clock.time()
        return json_response(
            {
                "account_id": account_id,
                "keys": [key.to_api(now) for key in page.items],
                "next_cursor": page.next_cursor,
            }
        )

    async def _create(self, request: web.Request, account_id: str) -> web.Response:
        api = self.api
        body, _ = await api.json_body(request, CreateKeyBody)
        if body.grace_period and body.replaces is None:
            raise bad_request("grace_period: only a rotation (replaces) has a grace period")
        api_key, prefix = new_api_key()
        op = CreateApiKey(
            account_id,
            new_key_id(api),
            key_hash(api_key),
            prefix,
            body.name,
            replaces=body.replaces,
            grace=float(body.grace_period),
            max_keys=MAX_API_KEYS,
        )
        key: ApiKey = (await api.execute(op)).unwrap()
        if body.replaces is not None:
            expires_at = api.ctx.clock.time() + body.grace_period
            api.auth.revoked(body.replaces, expires_at)
        rotation = f", replacing {body.replaces}" if body.replaces else ""
        log.info("API key %s created%s", key.id, rotation, extra={"account_id": account_id})
        answer: dict[str, Any] = {**key.to_api(api.ctx.clock.time()), "api_key": api_key}
        answer["replaces"] = body.replaces
        return json_response(answer, status=201)

    async def _revoke(self, account_id: str, key_id: str) -> web.Response:
        api = self.api
        key: ApiKey = (await api.execute(RevokeApiKey(account_id, key_id))).unwrap()
        if key.expires_at is not None:
            api.auth.revoked(key.id, key.expires_at)
        log.info("API key %s revoked", key.id, extra={"account_id": account_id})
        return json_response(key.to_api(api.ctx.clock.time()))
