"""runtime.webhooks against the Standard Webhooks reference library, both ways."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from runtime.errors import WebhookRejected, WebhookSignatureInvalid, WebhookTimestampStale
from runtime.webhooks import secret_key, sign, signed_headers, verify

SECRET = "whsec_" + base64.b64encode(b"a-secret-of-32-bytes-for-testing").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-nobody-should-use").decode()
NOW = 1_712_345_678


def reference_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_our_signature_is_the_reference_signature() -> None:
    body = b'{"id":"p1","status":"succeeded"}'
    assert (
        sign(SECRET, "msg_1", NOW, body)
        == reference_headers(SECRET, "msg_1", NOW, body)["webhook-signature"]
    )


def test_the_reference_library_accepts_what_we_sign() -> None:
    body = b'{"id":"p1","status":"succeeded"}'
    now = int(datetime.now(UTC).timestamp())
    headers = signed_headers(SECRET, "msg_1", now, body)
    assert Webhook(SECRET).verify(body, headers) == {"id": "p1", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(body, headers)


def test_we_accept_what_the_reference_library_signs() -> None:
    body = b'{"request_id":"r1","status":"OK"}'
    verify(SECRET, reference_headers(SECRET, "msg_2", NOW, body), body, now=NOW + 10)


@given(
    msg_id=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=40),
    body=st.text(max_size=200),
    key=st.binary(min_size=1, max_size=64),
    timestamp=st.integers(min_value=0, max_value=4_000_000_000),
)
def test_signatures_agree_with_the_reference_for_any_message(
    msg_id: str, body: str, key: bytes, timestamp: int
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    data = body.encode()
    ours = sign(secret, msg_id, timestamp, data)
    assert ours == reference_headers(secret, msg_id, timestamp, data)["webhook-signature"]
    verify(secret, signed_headers(secret, msg_id, timestamp, data), data, now=timestamp)


def test_a_wrong_secret_a_changed_body_or_a_changed_id_is_rejected() -> None:
    body = b'{"status":"succeeded"}'
    headers = signed_headers(OTHER, "msg_1", NOW, body)
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, body, now=NOW)
    headers = signed_headers(SECRET, "msg_1", NOW, body)
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, b'{"status":"failed"}', now=NOW)
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, {**headers, "webhook-id": "msg_2"}, body, now=NOW)
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, {**headers, "webhook-timestamp": str(NOW + 1)}, body, now=NOW)


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_rejected(drop: str) -> None:
    body = b"{}"
    headers = signed_headers(SECRET, "msg_1", NOW, body)
    del headers[drop]
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, body, now=NOW)


@pytest.mark.parametrize(
    "signature",
    ["", "v1", "v1,", "v1,not base64!", "v2,AAAA", "garbage", "v1,AAAA v1,BBBB"],
)
def test_malformed_signatures_are_rejected_not_crashing(signature: str) -> None:
    headers = {"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": signature}
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, b"{}", now=NOW)


def test_a_malformed_timestamp_is_rejected() -> None:
    headers = signed_headers(SECRET, "m", NOW, b"{}")
    headers["webhook-timestamp"] = "yesterday"
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, b"{}", now=NOW)


def test_any_one_of_several_signatures_may_match() -> None:
    body = b'{"a":1}'
    now = int(datetime.now(UTC).timestamp())
    good = sign(SECRET, "m", now, body)
    forged = sign(OTHER, "m", now, body)
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(now),
        "webhook-signature": f"v1a,xyz {forged} {good}",
    }
    verify(SECRET, headers, body, now=now)
    Webhook(SECRET).verify(body, headers)  # the reference library agrees
    headers["webhook-signature"] = f"v1a,xyz {forged}"
    with pytest.raises(WebhookSignatureInvalid):
        verify(SECRET, headers, body, now=now)


def test_header_names_are_case_insensitive() -> None:
    body = b"{}"
    headers = {k.title(): v for k, v in signed_headers(SECRET, "m", NOW, body).items()}
    verify(SECRET, headers, body, now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, -3600, 86_400])
def test_an_authentic_but_stale_or_future_timestamp_is_rejected(offset: int) -> None:
    body = b"{}"
    headers = signed_headers(SECRET, "m", NOW + offset, body)
    with pytest.raises(WebhookTimestampStale):
        verify(SECRET, headers, body, now=NOW)
    verify(SECRET, headers, body, now=NOW, tolerance=abs(offset))


def test_both_rejections_are_webhook_rejected() -> None:
    assert issubclass(WebhookSignatureInvalid, WebhookRejected)
    assert issubclass(WebhookTimestampStale, WebhookRejected)


def test_the_secret_prefix_and_padding_are_optional() -> None:
    raw = b"k" * 23  # base64 with padding
    padded = base64.b64encode(raw).decode()
    assert padded.endswith("=")
    assert secret_key("whsec_" + padded) == raw
    assert secret_key(padded) == raw
    assert secret_key("whsec_" + padded.rstrip("=")) == raw
    assert sign(padded, "m", NOW, b"") == sign("whsec_" + padded, "m", NOW, b"")


@pytest.mark.parametrize("secret", ["whsec_", "", "whsec_***"])
def test_an_unusable_secret_is_a_value_error(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)
