"""Who may call what: bearer tokens with roles, and per-token rate limits on submissions.

Every request passes :class:`Gatekeeper` (pure ASGI, before routing and
before any body is read):

* :func:`required_role` decides from the method and path alone. The health
  checks and the dashboard's static shell (HTML, JS, CSS, the API docs page
  and the OpenAPI document: code, no data) are open; other GETs need
  ``read``; ``POST /schedule`` and ``POST /plan`` need ``submit``; anything
  else, including an unknown path, needs ``admin``. A new route is therefore
  never open by accident.
* The token is compared with every configured token in constant time
  (:func:`hmac.compare_digest` over SHA-256 digests, so lengths leak
  nothing either) and never logged.
* ``POST /schedule`` and ``POST /plan`` are rate limited per token with the
  ``limits`` library (moving window, in memory, so per replica); over the
  limit is ``429`` with ``Retry-After``.

With no token configured the gate lets through every request addressed to
localhost (``Host``): that mode is for a workstation, and
:func:`scheduler.http.start_http` then binds the API to 127.0.0.1 only. The
``Host`` check is what keeps a web page out (DNS rebinding): a name re-pointed
at 127.0.0.1 makes the browser treat the API as the page's own origin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from scheduler.config import Role

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/static/", "/docs/assets/")
SUBMIT_PATHS = frozenset({"/schedule", "/plan"})
READ_METHODS = frozenset({"GET", "HEAD"})
REALM = 'Bearer realm="virtflow-scheduler"'


def required_role(method: str, path: str) -> Role | None:
    """The least role that may call ``method path``; None when the route is open to anyone.

    A trailing slash does not change the answer: ``POST /schedule/`` is only
    redirected to ``/schedule`` (307) by the router, so refusing it to a
    ``submit`` token as needing ``admin`` sent the caller after the wrong fix.
    """
    if len(path) > 1 and path.endswith("/") and not path.startswith(OPEN_PREFIXES):
        path = path[:-1]
    if method in READ_METHODS:
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return None
        return Role.READ
    if method == "POST" and path in SUBMIT_PATHS:
        return Role.SUBMIT
    return Role.ADMIN


class TokenTable:
    """The configured tokens, kept as SHA-256 digests and looked up in constant time."""

    def __init__(self, tokens: Mapping[str, Role]) -> None:
        self._entries = [(_digest(token), role, _fingerprint(token)) for token, role in tokens.items()]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def lookup(self, presented: str) -> tuple[Role, str] | None:
        """The role and a non-secret fingerprint of the matching token, or None.

        Every entry is compared, match or not, so the time taken says nothing
        about which token (or how much of one) was right.
        """
        wanted = _digest(presented)
        found: tuple[Role, str] | None = None
        for digest, role, fingerprint in self._entries:
            if hmac.compare_digest(digest, wanted) and found is None:
                found = (role, fingerprint)
        return found


class SubmissionLimiter:
    """Per-token limits (``limits`` notation, e.g. ``20/second;600/minute``) on the submission routes."""

    def __init__(self, notation: str) -> None:
        self.items: list[RateLimitItem] = parse_many(notation)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def retry_after(self, key: str) -> int | None:
        """Count one hit for ``key``; None if allowed, else whole seconds until the next hit would be."""
        for item in self.items:
            if not self._limiter.hit(item, key):
                reset = self._limiter.get_window_stats(item, key).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None


class Gatekeeper:
    """Pure ASGI middleware: authentication, authorization by role, and submission rate limits."""

    def __init__(self, app: ASGIApp, *, tokens: TokenTable, limiter: SubmissionLimiter) -> None:
        self.app = app
        self.tokens = tokens
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        needed = required_role(method, path)
        caller = _client_key(scope)
        if needed is not None and not self.tokens and not loopback_host(scope):
            # No token: only the loopback interface listens, but a browser reaches it too. A page
            # whose name an attacker re-points at 127.0.0.1 (DNS rebinding) is same-origin with the
            # API for that browser, and its requests carry the attacker's name as Host.
            detail = "without a configured token the API answers only requests addressed to localhost"
            await _answer(send, 403, {"detail": detail})
            return
        if needed is not None and self.tokens:
            presented = _bearer(scope)
            match = self.tokens.lookup(presented) if presented is not None else None
            if match is None:
                error = "" if presented is None else ', error="invalid_token"'
                detail = "missing bearer token" if presented is None else "invalid bearer token"
                await _answer(
                    send, 401, {"detail": detail}, [(b"www-authenticate", (REALM + error).encode())]
                )
                return
            role, caller = match
            if role.rank < needed.rank:
                detail = f"this token's role is {role.value}; {method} {path} needs {needed.value}"
                await _answer(send, 403, {"detail": detail})
                return
            scope.setdefault("state", {})["role"] = role.value
        if method == "POST" and path in SUBMIT_PATHS:
            wait = self.limiter.retry_after(caller)
            if wait is not None:
                detail = f"rate limit exceeded ({'; '.join(str(i) for i in self.limiter.items)} per token)"
                await _answer(send, 429, {"detail": detail}, [(b"retry-after", str(wait).encode())])
                return
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    """The bearer token presented; "" when the header is there but holds none; None when absent.

    Two ``Authorization`` headers are refused (""), whatever they hold: the
    field takes one value, and which of two counts is a guess that a proxy
    adding its own and the client sending one could each win (the first
    one used to be taken silently).
    """
    values = [bytes(value) for key, value in scope.get("headers", ()) if key == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        return ""
    scheme, _, credentials = values[0].decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return ""  # present but not a bearer token: wrong, not missing


def loopback_host(scope: Scope) -> bool:
    """Whether the request's ``Host`` names this machine's loopback: ``localhost`` (or a name under
    it, which browsers keep on loopback themselves), ``127.x.x.x`` or ``[::1]``, any port.

    A name that DNS re-pointed at 127.0.0.1 is not one of these, whatever it resolves to.
    """
    host = None
    for key, value in scope.get("headers", ()):
        if key == b"host":
            host = bytes(value).decode("latin-1").strip().lower()
            break
    if not host:
        return False
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _client_key(scope: Scope) -> str:
    """Who is counted when no token identifies the caller (no tokens configured): the client address."""
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:unknown"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _fingerprint(token: str) -> str:
    """A short, non-reversible name for a token, usable as a rate-limit key and in logs."""
    return "token:" + hashlib.sha256(b"fingerprint:" + token.encode()).hexdigest()[:12]


async def _answer(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
