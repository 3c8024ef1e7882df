"""Webhook signatures per the Standard Webhooks specification (https://www.standardwebhooks.com).

Every attempt carries::

    webhook-id: <event id>            (the same on every retry: receivers de-duplicate on it)
    webhook-timestamp: <unix seconds> (of this attempt)
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")> [v1,<...> ...]

with one ``v1,`` signature per configured secret, space-separated, so a
receiver holding either the old or the new secret verifies during a
rotation. Secrets are written ``whsec_<base64 of the key>``, as every
Standard Webhooks library expects them, so any of those libraries (Python,
Node, Go, Ruby, ...) verifies a delivery: see ``docs/webhooks.md``.

Signing the id and the timestamp with the body is what lets a receiver
refuse replays (a captured request cannot be re-sent later with a fresh
timestamp). Each attempt is signed at the moment it is sent, so a retry
hours later still passes the receivers' five-minute window.

Why written here rather than imported from the ``standardwebhooks``
package: signing is one HMAC per secret; the package is what the tests
verify deliveries with, and a verifier that shares no code with the signer
is a real check of interoperability. The keys only ever reach
:func:`hmac.new`; nothing here logs, formats or returns them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.config import WebhooksConfig

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
EVENT_HEADER = "X-Scheduler-Event"
SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64


class SecretFormatError(ValueError):
    """A secret that is not ``whsec_<base64>`` of 24..64 bytes; the message never contains the secret."""


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """One decoded secret. ``repr`` shows nothing of it, so it cannot reach a log by accident."""

    key: bytes

    def __repr__(self) -> str:
        return "SigningKey(***)"


def decode_secret(secret: str) -> SigningKey:
    """``whsec_<base64>`` -> the key; :class:`SecretFormatError` (never echoing the secret) otherwise.

    The key must be 24 to 64 bytes, the range the specification gives;
    base64 padding may be left out, as the reference libraries allow.
    """
    text = secret.strip()
    if not text.startswith(SECRET_PREFIX):
        raise SecretFormatError(
            f"must start with {SECRET_PREFIX} followed by base64 (e.g. `scheduler webhooks new-secret`)"
        )
    body = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SecretFormatError(f"the part after {SECRET_PREFIX} is not valid base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise SecretFormatError(
            f"the key after {SECRET_PREFIX} must decode to {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes, "
            f"not {len(key)}"
        )
    return SigningKey(key)


def new_secret(size: int = 32) -> str:
    """A fresh random ``whsec_`` secret (``size`` bytes of key)."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(size)).decode("ascii")


def signature(keys: Sequence[SigningKey], event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64>`` per key, space-separated ("" without keys)."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(k.key, signed, hashlib.sha256).digest()).decode("ascii")
        for k in keys
    )


def signed_headers(
    keys: Sequence[SigningKey], *, event_type: str, event_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """Every header of one attempt; without keys (``webhooks.allow_unsigned``) no signature header.

    Why leave it out rather than sign with an empty key: an HMAC under an
    empty key proves nothing, and a receiver that requires signatures should
    see that none was sent instead of accepting a forgeable one.
    """
    headers = {
        "Content-Type": "application/json",
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: event_type,
    }
    if keys:
        headers[SIGNATURE_HEADER] = signature(keys, event_id, timestamp, body)
    return headers


def signing_keys(config: WebhooksConfig) -> list[SigningKey]:
    """The decoded keys of ``webhooks.secrets`` (and the older ``webhooks.secret``), in order."""
    return [decode_secret(s) for s in config.all_secrets()]


def unsigned_refusal(config: WebhooksConfig) -> str | None:
    """Why a worker must not start with this configuration (one line), or None.

    Webhooks go somewhere (``urls`` or ``allow``) but there is no secret,
    and unsigned delivery was not asked for with ``allow_unsigned: true``.
    With no target at all nothing is ever sent, so nothing is unsigned.
    """
    if (config.urls or config.allow) and not config.all_secrets() and not config.allow_unsigned:
        return (
            "webhooks.secrets (env WEBHOOK_SECRET) is empty: set a whsec_ secret "
            "(`scheduler webhooks new-secret` makes one), or webhooks.allow_unsigned: true to send unsigned"
        )
    return None
