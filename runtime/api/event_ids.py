"""The ids of server-sent events as an account sees them: opaque, so that they do not
tell one tenant how busy the others are.

Theory of operation
-------------------
Every status change is one ``job_history`` row, numbered by a global ``seq`` in commit
order; a stream resumes after a seq (``Last-Event-ID``). Shown as it is, the seq is a
counter of every tenant's traffic: two events of one's own, or two connections a minute
apart, give the number of status changes of all accounts in between. So an event id is
the seq and a tag of the account, encrypted as one AES block (a keyed permutation of
128 bits; ``cryptography``), written in base64url: 22 characters that look random and
change in no readable way from one event to the next. Reading one back decrypts it and
checks the tag: an id of another account, from another key, or made up, is "not an
event id" (the stream starts now, as for any unknown id). ``"0"`` stays "from the
beginning" (it tells nothing).

The key is derived from the gateway's admin token (``[gateway] admin_token_env``), the
one secret every gateway of a deployment shares, so any gateway resumes an id another
one sent; rotating the token makes older ids unknown (their streams restart from now).
A gateway with no admin token draws a key of its own at start: its ids resume on it only
until it restarts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["FROM_THE_START", "EventIds"]

FROM_THE_START = "0"  # Last-Event-ID that replays the whole history
_ID_CHARS = 22  # base64url of 16 bytes, unpadded
_MAX_SEQ = 2**63 - 1
_PROCESS_SECRET = os.urandom(32)  # for a gateway without an admin token


class EventIds:
    """``encode(account, seq)`` -> an opaque id; ``decode(account, id)`` -> the seq or None."""

    def __init__(self, secret: str | bytes | None) -> None:
        raw = secret or _PROCESS_SECRET
        raw = raw.encode() if isinstance(raw, str) else raw
        derived = hmac.new(raw, b"jobline event ids v1", hashlib.sha256).digest()
        self._cipher = Cipher(algorithms.AES(derived[:16]), modes.ECB())  # one block: a PRP
        self._tag_key = derived[16:]

    def encode(self, account_id: str, seq: int) -> str:
        """The id shown to ``account_id`` for history row ``seq`` (0 <= seq < 2**63)."""
        if not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"a history seq is between 0 and 2**63 - 1, not {seq!r}")
        encryptor = self._cipher.encryptor()
        block = encryptor.update(seq.to_bytes(8, "big") + self._tag(account_id))
        return _text(block + encryptor.finalize())

    def decode(self, account_id: str, event_id: str) -> int | None:
        """The seq behind an id this account was sent; 0 for ``FROM_THE_START``; None for
        anything else (another account's id, another key's, or no id at all)."""
        if event_id == FROM_THE_START:
            return 0
        if len(event_id) != _ID_CHARS or not event_id.isascii():
            return None
        try:
            block = base64.urlsafe_b64decode(event_id + "==")
        except (binascii.Error, ValueError):
            return None
        if len(block) != 16 or _text(block) != event_id:  # one spelling per id
            return None
        decryptor = self._cipher.decryptor()
        plain = decryptor.update(block) + decryptor.finalize()
        if not hmac.compare_digest(plain[8:], self._tag(account_id)):
            return None
        return int.from_bytes(plain[:8], "big")

    def _tag(self, account_id: str) -> bytes:
        return hmac.new(self._tag_key, account_id.encode(), hashlib.sha256).digest()[:8]


def _text(block: bytes) -> str:
    return base64.urlsafe_b64encode(block).rstrip(b"=").decode()
