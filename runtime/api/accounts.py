"""Accounts and credits: create an account (admin), grant credits (admin), the balance and
the statement (the account's own API key)."""

from __future__ import annotations

import secrets

from aiohttp import web

from runtime.api.bodies import CreateAccountBody, GrantBody
from runtime.api.context import Api, key_hash, log
from runtime.models import CreateAccount, Grant


class AccountRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/accounts", self.create_account),
            web.post("/v1/accounts/{id}/credits", self.grant_credits),
            web.get("/v1/credits", self.get_credits, allow_head=False),
            web.get("/v1/credits/entries", self.get_credit_entries, allow_head=False),
        ]

    async def create_account(self, request: web.Request) -> web.Response:
        api = self.api
        api.require_admin(request)
        body, _ = await api.json_body(request, CreateAccountBody)
        account_id = "acct_" + api.ctx.rng.getrandbits(96).to_bytes(12, "big").hex()
        api_key = "jl_" + secrets.token_urlsafe(32)  # a credential: never from a seeded rng
        (await api.execute(CreateAccount(account_id, key_hash(api_key), body.name))).unwrap()
        credits = 0
        if body.credits > 0:
            grant = Grant(account_id, body.credits, f"{account_id}:initial")
            credits = (await api.execute(grant)).unwrap().available
        log.info("account created", extra={"account_id": account_id})
        return web.json_response(
            {"account_id": account_id, "name": body.name, "api_key": api_key, "credits": credits},
            status=201,
        )

    async def grant_credits(self, request: web.Request) -> web.Response:
        api = self.api
        api.require_admin(request)
        account_id = request.match_info["id"]
        header_key = api.idempotency_key(request)
        body, _ = await api.json_body(request, GrantBody)
        grant_id = body.grant_id or header_key or f"{api.ctx.rng.getrandbits(128):032x}"
        # Grant ids are unique across the ledger: scope them to the account.
        outcome = await api.execute(Grant(account_id, body.amount, f"{account_id}:{grant_id}"))
        balance = outcome.unwrap()
        return web.json_response(
            {"account_id": account_id, **balance.to_api(), "granted": outcome.changed}
        )

    async def get_credits(self, request: web.Request) -> web.Response:
        account_id = await self.api.account(request)
        balance = await self.api.read(self.api.ctx.ledger.balance(account_id))
        return web.json_response({"account_id": account_id, **balance.to_api()})

    async def get_credit_entries(self, request: web.Request) -> web.Response:
        account_id = await self.api.account(request)
        entries = await self.api.read(self.api.ctx.ledger.statement(account_id))
        return web.json_response(
            {"account_id": account_id, "entries": [entry.to_api() for entry in entries]}
        )
