"""Webhook signatures: what the dispatcher sends and what a receiver checks.

The scheme is the one of DESIGN.md, the same shape as Stripe's:
``X-Scheduler-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``
with ``X-Scheduler-Timestamp`` in unix seconds. Signing the timestamp with
the body is what makes a replay window possible: a captured request cannot
be re-sent later with a fresh timestamp without the secret.

Each attempt is signed at the moment it is sent, so a retry hours later
carries a fresh timestamp and still passes a five-minute window; the event
id (``X-Scheduler-Delivery``) stays the same, for de-duplication.

The secret only ever reaches :func:`hmac.new`; nothing here logs, formats or
returns it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

EVENT_HEADER = "X-Scheduler-Event"
DELIVERY_HEADER = "X-Scheduler-Delivery"
TIMESTAMP_HEADER = "X-Scheduler-Timestamp"
SIGNATURE_HEADER = "X-Scheduler-Signature"
SCHEME = "sha256"
DEFAULT_TOLERANCE = 300.0
"""Seconds a receiver should accept between the signed timestamp and its own clock (five minutes)."""

Secret = str | bytes


class SignatureError(ValueError):
    """A request whose signature does not prove it came from the scheduler, recently; the message says why."""


def _key(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def signature(secret: Secret, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` over ``b"<timestamp>." + body``: the value of ``X-Scheduler-Signature``."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def signed_headers(
    secret: Secret, *, event_type: str, delivery_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """Every header of one attempt; without a secret the signature header is left out.

    Why leave it out rather than sign with an empty key: an HMAC under an
    empty key proves nothing, and a receiver that requires signatures should
    see that none was configured instead of accepting a forgeable one
    (GitHub does the same for hooks without a secret).
    """
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: event_type,
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return headers


def verify(
    secret: Secret | Sequence[Secret],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """Check one received request; return its signed timestamp or raise :class:`SignatureError`.

    ``headers`` may be any mapping or (name, value) pairs (names compared
    case-insensitively); ``body`` must be the raw bytes as received, before
    any JSON parsing. ``now`` is the receiver's unix time (default: the
    clock). A timestamp more than ``tolerance`` seconds away from ``now``
    in either direction is refused: older is a replay, newer is a clock
    problem worth hearing about. ``secret`` may be a list during a secret
    rotation; any one of them matching is enough. The comparison is
    constant-time.
    """
    found = _lower(headers)
    raw_ts = found.get(TIMESTAMP_HEADER.lower())
    raw_sig = found.get(SIGNATURE_HEADER.lower())
    if raw_ts is None:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    if raw_sig is None:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    try:
        timestamp = int(raw_ts.strip())
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not an integer") from None
    current = time.time() if now is None else now
    age = current - timestamp
    if abs(age) > tolerance:
        when = "old" if age > 0 else "in the future"
        raise SignatureError(f"timestamp is {abs(age):.0f} s {when} (tolerance {tolerance:.0f} s)")
    offered = [part.strip() for part in raw_sig.split(",") if part.strip().startswith(f"{SCHEME}=")]
    if not offered:
        raise SignatureError(f"{SIGNATURE_HEADER} has no {SCHEME}= value")
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    if not any(secrets):
        raise SignatureError("no secret to verify with")
    ok = False
    for key in secrets:
        if not key:
            continue
        expected = signature(key, timestamp, body).encode("ascii")
        for candidate in offered:
            # No early exit on a match: the time taken does not depend on which one matched.
            ok |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    if not ok:
        raise SignatureError("signature does not match the body and timestamp")
    return timestamp


def _lower(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    # email.message.Message (what http.server hands over) has items() but is no Mapping.
    items_of = getattr(headers, "items", None)
    items: Iterable[tuple[str, str]] = (
        items_of() if callable(items_of) else cast(Iterable[tuple[str, str]], headers)
    )
    return {str(name).lower(): str(value) for name, value in items}
