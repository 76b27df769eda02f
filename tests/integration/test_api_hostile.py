"""Input hygiene and hostile clients at the gateway (issue 13, cases 7 to 11): free models,
refusals that are never a retryable 503 or a traceback, JSON depth, vendor webhooks of any
shape (fuzzed with Hypothesis, correctly signed), slow clients over raw sockets, wrong API
keys, and one account's expensive reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from hypothesis import strategies as st
from standardwebhooks import Webhook

from actors.gateway import Gateway
from loadtests.chaos.fuzz_schema import draw_examples, json_values
from loadtests.testbed import ROOT_CONFIG
from runtime.api import GATEWAY_API
from runtime.config import JoblineConfig, load_config
from runtime.errors import ActorCallFailed, LedgerFault
from runtime.invariants import check_invariants
from runtime.ledger import Ledger
from runtime.models import EntryPage, LedgerOp, Outcome
from tests.integration.api_fixtures import (  # noqa: F401
    WEBHOOK_SECRET,
    ApiHarness,
    MakeApi,
    api_fixture,
    make_api_fixture,
)
from tests.integration.conftest import StartFake

TRACEBACK_TEXT = 'Traceback (most recent call last):\n  File "/srv/ledger.py", line 1, in op'


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str, str]:
    body = await response.json()
    return response.status, body["error"]["code"], body["error"]["message"]


def with_free_model(config: JoblineConfig) -> JoblineConfig:
    free = config.models["flux-schnell"].model_copy(update={"name": "free", "price": 0})
    return config.model_copy(update={"models": {**config.models, "free": free}})


# --- a price of 0 (case 7) ------------------------------------------------------------------


async def test_a_model_priced_zero_runs_end_to_end(make_api: MakeApi) -> None:
    api = await make_api(config=with_free_model(load_config(ROOT_CONFIG)))
    account = await api.account(credits=0)
    job = await api.submitted(account, model="free")  # was: 503, Retry-After, a traceback
    assert (job["cost"], job["status"]) == (0, "queued")
    await api.complete(job["id"])
    entries = await (await api.client.get("/v1/credits/entries", headers=account.auth)).json()
    assert [(e["kind"], e["amount"]) for e in entries["entries"]] == [
        ("hold", 0),
        ("capture", 0),
    ]
    assert (await api.balance(account))["available"] == 0
    assert check_invariants(api.ledger.path) == []


class BrokenLedger:
    """The ledger, except that operations fail with a bug's error and reads raise what a
    remote call raises: messages with a traceback in them."""

    def __init__(self, ledger: Ledger, read_error: BaseException) -> None:
        self._ledger = ledger
        self.read_error = read_error
        self.broken_ops = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        if not self.broken_ops:
            return await self._ledger.execute_many(ops)
        fault = LedgerFault(type(ops[0]).__name__, f"ValueError: boom\n{TRACEBACK_TEXT}")
        return [Outcome(error=fault, changed=False) for _ in ops]

    async def balance(self, account_id: str) -> Any:
        raise self.read_error


def no_traceback(body: dict[str, Any]) -> bool:
    text = json.dumps(body)
    return "Traceback" not in text and 'File \\"' not in text and "ledger.py" not in text


async def test_a_bug_is_a_500_that_is_not_worth_retrying_and_shows_no_traceback(
    make_api: MakeApi,
) -> None:
    broken: list[BrokenLedger] = []

    def wrap(ledger: Ledger) -> BrokenLedger:
        broken.append(BrokenLedger(ledger, ActorCallFailed("balance", "TypeError")))
        return broken[0]

    api = await make_api(wrap_ledger=wrap)
    account = await api.account()
    broken[0].broken_ops = True
    for response in (
        await api.submit(account),
        await api.client.get("/v1/credits", headers=account.auth),
    ):
        body = await response.json()
        assert (response.status, body["error"]["code"]) == (500, "internal_error")
        assert "Retry-After" not in response.headers  # retrying cannot help
        assert no_traceback(body)


async def test_an_unreachable_ledger_is_a_503_whose_message_has_no_traceback(
    make_api: MakeApi,
) -> None:
    error = ConnectionError(f"the ledger actor died\n{TRACEBACK_TEXT}")
    api = await make_api(wrap_ledger=lambda ledger: BrokenLedger(ledger, error))
    account = await api.account()
    response = await api.client.get("/v1/credits", headers=account.auth)
    body = await response.json()
    assert (response.status, body["error"]["code"]) == (503, "ledger_unavailable")
    assert response.headers["Retry-After"] == "1" and no_traceback(body)


# --- JSON depth (case 8) ---------------------------------------------------------------------


async def test_deeply_nested_json_is_a_400_naming_the_limit(api: ApiHarness) -> None:
    account = await api.account()
    for depth in (40, 500, 20_000):
        nested = "[" * depth + "]" * depth
        raw = f'{{"model": "flux-schnell", "input": {{"prompt": "x", "seed": {nested}}}}}'
        response = await api.client.post(
            "/v1/jobs",
            data=raw.encode(),
            headers={**account.auth, "Content-Type": "application/json"},
        )
        status, code, message = await error_of(response)
        assert (status, code) == (400, "bad_request"), depth
        assert "gateway.max_json_depth" in message and "32" in message
    shallow = await api.submit(account)
    assert shallow.status == 202


# --- vendor webhooks of any shape (case 9) ------------------------------------------------


async def fal_api(make_api: MakeApi, start_fake: StartFake) -> tuple[ApiHarness, Any]:
    fake = await start_fake("fal")
    config = load_config(ROOT_CONFIG)
    fal = config.vendors["fal"].model_copy(update={"webhook_jwks_url": fake.jwks_url})
    config = config.model_copy(update={"vendors": {**config.vendors, "fal": fal}})
    return await make_api(config=config), fake


def fal_headers(fake: Any, body: bytes) -> dict[str, str]:
    try:
        request_id = json.loads(body).get("request_id")
    except (ValueError, AttributeError):
        request_id = None
    printable = isinstance(request_id, str) and request_id.isprintable() and request_id.isascii()
    if not printable or not request_id:  # a header cannot carry it: the ids will differ
        request_id = "req-" + secrets.token_hex(4)
    headers: dict[str, str] = fake.core.fal_signer.headers(request_id, int(time.time()), body)
    return headers


def replicate_headers(body: bytes) -> dict[str, str]:
    msg_id = "msg_" + secrets.token_hex(8)
    now = datetime.now(UTC)
    signature = Webhook(WEBHOOK_SECRET).sign(msg_id, now, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


async def test_a_signed_fal_error_webhook_whose_type_is_a_list_is_not_a_500(
    make_api: MakeApi, start_fake: StartFake
) -> None:
    api, fake = await fal_api(make_api, start_fake)
    body = json.dumps(
        {
            "request_id": "req-case-9",
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {"detail": [{"loc": ["body"], "msg": "bad", "type": ["value_error"]}]},
        }
    ).encode()
    response = await api.client.post("/v1/webhooks/fal", data=body, headers=fal_headers(fake, body))
    assert response.status == 200, await response.text()  # a real error event: accepted
    event = api.router.processors["fal"].webhooks
    await asyncio.sleep(0.05)
    assert [e.task_id for e in event] == ["req-case-9"]


async def test_a_number_too_large_for_a_float_is_a_400_naming_it(api: ApiHarness) -> None:
    """Review of issue 13: ``1e400`` became ``inf`` and later answers said ``Infinity``
    (not JSON); it is refused at the edge, by name."""
    account = await api.account()
    raw = b'{"model": "flux-schnell", "input": {"prompt": "x", "seed": 1e400}}'
    response = await api.client.post(
        "/v1/jobs", data=raw, headers={**account.auth, "Content-Type": "application/json"}
    )
    status, code, message = await error_of(response)
    assert (status, code) == (400, "bad_request")
    assert "not JSON: a number too large (1e400)" in message


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"id": "p1", "status": "succeeded", "metrics": {"predict_time": 1e400}}', "too large"),
        (
            b'{"id": "p1", "status": "succeeded", "output": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "nested deeper than 64 levels",
        ),
    ],
)
async def test_a_signed_webhook_with_an_overflowing_or_too_deep_body_is_a_clean_400(
    api: ApiHarness, body: bytes, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Review of issue 13: ``1e400`` in a signed webhook was taken as ``inf``; a deeply
    nested one answered "RecursionError: maximum recursion depth exceeded" and logged a
    traceback. Both are a 400 saying what is wrong, and nothing is logged as a failure."""
    response = await api.client.post(
        "/v1/webhooks/replicate", data=body, headers=replicate_headers(body)
    )
    answer = await response.json()
    assert response.status == 400, answer
    assert says in answer["error"]["message"]
    assert "RecursionError" not in answer["error"]["message"] and no_traceback(answer)
    assert not [r for r in caplog.records if r.exc_info]


# The vendors' own body shapes (replicate's prediction, fal's webhook), each field either
# as documented or any JSON value at all; plus bodies that are not objects.
def _documented_or_any(documented: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(documented, json_values())


_OUTPUT = st.one_of(
    st.just("https://example.com/out.png"),
    st.lists(st.just("https://example.com/out.png"), max_size=3),
    st.just("data:image/png;base64,iVBORw0KGgo="),
    st.none(),
)
_FAL_ERROR_DETAIL = st.lists(
    st.fixed_dictionaries(
        {"loc": json_values(), "msg": json_values(), "type": _documented_or_any(st.text())}
    ),
    max_size=3,
)
REPLICATE_BODIES = st.one_of(
    st.fixed_dictionaries(
        {
            "id": _documented_or_any(st.text(min_size=1, max_size=20)),
            "status": _documented_or_any(
                st.sampled_from(
                    ["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
                )
            ),
            "output": _documented_or_any(_OUTPUT),
            "error": _documented_or_any(st.one_of(st.none(), st.text(), _FAL_ERROR_DETAIL)),
            "logs": _documented_or_any(st.text(max_size=50)),
            "metrics": _documented_or_any(st.fixed_dictionaries({"predict_time": st.floats()})),
        },
        optional={"input": json_values(), "urls": json_values()},
    ),
    json_values(),
)
FAL_BODIES = st.one_of(
    st.fixed_dictionaries(
        {
            "request_id": _documented_or_any(st.text(min_size=1, max_size=20)),
            "status": _documented_or_any(st.sampled_from(["OK", "ERROR"])),
            "payload": _documented_or_any(
                st.one_of(
                    st.none(),
                    st.fixed_dictionaries(
                        {"images": st.lists(st.fixed_dictionaries({"url": _OUTPUT}), max_size=2)}
                    ),
                    st.fixed_dictionaries({"detail": _FAL_ERROR_DETAIL}),
                )
            ),
            "error": _documented_or_any(st.one_of(st.none(), st.text())),
        },
        optional={"payload_error": json_values(), "gateway_request_id": json_values()},
    ),
    json_values(),
)


async def test_fuzzed_signed_webhooks_of_both_vendors_never_get_a_5xx(
    make_api: MakeApi, start_fake: StartFake
) -> None:
    api, fake = await fal_api(make_api, start_fake)
    sent: dict[str, list[int]] = {"replicate": [], "fal": []}
    for vendor, bodies in (("replicate", REPLICATE_BODIES), ("fal", FAL_BODIES)):
        for value in draw_examples(bodies, 150, seed=13):
            body = json.dumps(value).encode()
            headers = fal_headers(fake, body) if vendor == "fal" else replicate_headers(body)
            response = await api.client.post(f"/v1/webhooks/{vendor}", data=body, headers=headers)
            answer = await response.json()
            assert response.status < 500, (vendor, value, answer)
            assert response.status != 401, (vendor, value, answer)  # signed: it got to parse
            assert no_traceback(answer)
            sent[vendor].append(response.status)
    for statuses in sent.values():  # both readable and unreadable shapes were tried
        assert 200 in statuses and 400 in statuses


# --- slow clients (case 10) -----------------------------------------------------------------


async def serve(api: ApiHarness) -> Gateway:
    assert api.client.app is not None
    gateway = Gateway(api.client.app[GATEWAY_API].ctx, "127.0.0.1", 0)
    await gateway.start()
    return gateway


async def closed_after(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before.

    A close while the client's bytes are still unread arrives as a reset (RST, not FIN):
    that is a closed connection too, and what came before it still counts.
    """
    started = time.monotonic()
    received = bytearray()

    async def until_closed() -> None:
        while chunk := await reader.read(65_536):
            received.extend(chunk)

    with contextlib.suppress(ConnectionResetError):
        await asyncio.wait_for(until_closed(), within)
    return time.monotonic() - started, bytes(received)


async def test_an_idle_connection_is_closed_after_the_idle_timeout(make_api: MakeApi) -> None:
    gateway = await serve(await make_api(idle_timeout=0.5, header_timeout=10.0))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        elapsed, data = await closed_after(reader, 5.0)
        assert data == b"" and 0.4 <= elapsed < 3.0
        writer.close()
        # A keep-alive client that uses its connection is unaffected.
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"http://127.0.0.1:{gateway.port}/healthz") as response:
                    assert response.status == 200
                await asyncio.sleep(0.2)
    finally:
        await gateway.stop()


async def test_headers_sent_a_byte_at_a_time_are_cut_at_the_header_timeout(
    make_api: MakeApi,
) -> None:
    gateway = await serve(await make_api(idle_timeout=30.0, header_timeout=0.5))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)

        async def dribble() -> None:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for byte in b"X-Slow: " + b"a" * 200:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickle = asyncio.ensure_future(dribble())
        elapsed, data = await closed_after(reader, 5.0)
        trickle.cancel()
        assert data == b"" and elapsed < 3.0  # not the idle timeout's 30 s
        assert gateway.guard is not None and gateway.guard.closed == 1
        writer.close()
    finally:
        await gateway.stop()


async def test_a_slow_head_after_quick_requests_is_cut_at_the_header_timeout_from_its_start(
    make_api: MakeApi,
) -> None:
    """Quick requests on one keep-alive connection for longer than the header timeout are
    never cut; a head that then trickles is cut ``header_timeout`` after its first byte."""
    gateway = await serve(await make_api(idle_timeout=30.0, header_timeout=0.5))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        loop = asyncio.get_running_loop()
        quick_until = loop.time() + 1.3
        answered = 0
        while loop.time() < quick_until:
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            answered += 1
            await asyncio.sleep(0.02)
        assert answered >= 10 and gateway.guard is not None and gateway.guard.closed == 0
        writer.close()

        # A fresh connection: its first request arms the timer; the head that follows
        # is still waiting when that timer fires, and is cut at its own time.
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(request)
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.2)

        async def dribble() -> None:
            for byte in request[:-2] + b"X-Slow: " + b"a" * 200:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickle = asyncio.ensure_future(dribble())
        elapsed, _ = await closed_after(reader, 5.0)
        trickle.cancel()
        assert 0.4 <= elapsed < 3.0
        assert gateway.guard.closed == 1
        writer.close()
    finally:
        await gateway.stop()


async def test_a_body_sent_a_byte_at_a_time_is_cut_at_the_body_timeout(
    make_api: MakeApi,
) -> None:
    gateway = await serve(await make_api(idle_timeout=30.0, body_timeout=0.5))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            b"POST /v1/webhooks/fal HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )

        async def dribble() -> None:
            for _ in range(1000):
                writer.write(b" ")
                await asyncio.sleep(0.05)

        trickle = asyncio.ensure_future(dribble())
        elapsed, data = await closed_after(reader, 5.0)
        trickle.cancel()
        assert data.startswith(b"HTTP/1.1 408") and b"gateway.body_timeout" in data
        assert elapsed < 3.0
        writer.close()
    finally:
        await gateway.stop()


# --- wrong keys and expensive reads (case 11) ----------------------------------------------


class CountingLedger:
    """The ledger, counting key lookups and statement reads (holding those while asked)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.hashes_looked_up = 0
        self.statements_running = 0
        self.most_statements = 0
        self.hold = asyncio.Event()
        self.hold.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def keys_for_hashes(self, hashes: Sequence[str]) -> Any:
        self.hashes_looked_up += len(hashes)
        return await self._ledger.keys_for_hashes(hashes)

    async def statement(self, *args: Any) -> EntryPage:
        self.statements_running += 1
        self.most_statements = max(self.most_statements, self.statements_running)
        try:
            await self.hold.wait()
            return await self._ledger.statement(*args)
        finally:
            self.statements_running -= 1


async def counting_api(make_api: MakeApi, **overrides: Any) -> tuple[ApiHarness, CountingLedger]:
    counting: list[CountingLedger] = []

    def wrap(ledger: Ledger) -> CountingLedger:
        counting.append(CountingLedger(ledger))
        return counting[0]

    api = await make_api(wrap_ledger=wrap, **overrides)
    return api, counting[0]


async def test_32_clients_with_wrong_keys_do_not_cost_a_ledger_lookup_each(
    make_api: MakeApi,
) -> None:
    api, ledger = await counting_api(make_api, failed_auth_burst=5, failed_auths_per_second=1.0)
    other = await api.account(name="other")
    assert (await api.client.get("/v1/credits", headers=other.auth)).status == 200
    before = ledger.hashes_looked_up

    async def wrong(key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        return (await api.client.get("/v1/credits", headers=headers)).status

    same = await asyncio.gather(*(wrong("jl_the-same-wrong-key") for _ in range(32)))
    assert set(same) == {401} and ledger.hashes_looked_up == before + 1  # coalesced, cached
    distinct = await asyncio.gather(*(wrong(f"jl_guess-{i}") for i in range(32)))
    assert ledger.hashes_looked_up <= before + 1 + 5  # the source's burst, then 429s
    assert distinct.count(429) >= 32 - 5
    # Nobody else waits: another account's key (cached) and a known key from that address.
    assert (await api.client.get("/v1/credits", headers=other.auth)).status == 200


async def test_one_accounts_statement_reads_run_a_few_at_a_time(make_api: MakeApi) -> None:
    api, ledger = await counting_api(make_api, reads_in_flight_per_account=2)
    heavy, light = await api.account(name="heavy"), await api.account(name="light")
    ledger.hold.clear()  # the heavy account's statement reads take their time
    reads = [
        asyncio.ensure_future(api.client.get("/v1/credits/entries", headers=heavy.auth))
        for _ in range(16)
    ]
    await asyncio.sleep(0.2)
    assert ledger.most_statements == 2  # two run; the others wait or are refused
    # Another account's reads are not queued behind them.
    light_read = asyncio.ensure_future(api.client.get("/v1/credits/entries", headers=light.auth))
    await asyncio.sleep(0.2)
    assert ledger.most_statements == 3 and not light_read.done()  # held by the test only
    ledger.hold.set()
    assert (await light_read).status == 200
    statuses = [(await read).status for read in reads]
    assert statuses.count(200) == 2 + 2 * 4  # two running, eight waiting; the rest 429
    assert statuses.count(429) == 16 - 10
