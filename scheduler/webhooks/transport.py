"""HTTP clients for deliveries: direct connections, and a connect-time address guard for callbacks.

Why a guard at connect time: a callback URL's host is a name chosen by
whoever submitted the request. Checking its addresses before the request
and letting the HTTP library resolve it again when connecting leaves a gap
(DNS rebinding: the second answer can be 169.254.169.254). The guarded
transport resolves the name itself, refuses the connection if *any* answer
is a link-local, metadata, multicast, unspecified or reserved address
(:func:`scheduler.webhooks.policy.address_refusal`), and connects only to
the addresses it checked. TLS is untouched: the certificate is still
verified against the URL's host name.

Why no proxies from the environment: a proxy would resolve and connect on
our behalf and the guard would check the proxy, not the receiver. The
dispatcher calls receivers directly; ``SSL_CERT_FILE`` and friends are still
honoured for custom CAs.

Why this replaces the pool inside :class:`httpx.HTTPTransport` instead of
writing a transport from scratch: the request and response conversion and
the exception mapping stay httpx's own; only the network backend differs.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

import httpcore
import httpx

from scheduler.webhooks.policy import address_refusal


class RefusedAddress(httpcore.ConnectError):
    """A callback host resolved to an address the scheduler never calls; nothing was connected."""


class GuardedBackend(httpcore.SyncBackend):
    """``SyncBackend`` whose TCP connects go only to resolved addresses that pass the policy."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[str] = []
        for info in infos:
            text = str(info[4][0])
            if text not in addresses:
                addresses.append(text)
        for text in addresses:
            refusal = address_refusal(ipaddress.ip_address(text.split("%", 1)[0]))
            if refusal is not None:
                raise RefusedAddress(f"{host} resolves to a refused {refusal}")
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        last: Exception | None = None
        for text in addresses:
            try:
                return super().connect_tcp(text, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last


def user_agent() -> str:
    try:
        return f"virtflow-scheduler-webhooks/{version('virtflow-scheduler')}"
    except PackageNotFoundError:  # a plain checkout
        return "virtflow-scheduler-webhooks"


def _transport(limits: httpx.Limits, guarded: bool) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(limits=limits)
    if guarded:
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(),
        )
    return transport


def make_client(*, timeout: float, concurrency: int, guarded: bool) -> httpx.Client:
    """A client for deliveries: connect/read/write timeouts, no redirects, no env proxies.

    One client per dispatcher and kind (configured URLs, callbacks), shared
    by its sending threads: httpx's pool is thread-safe and keeping
    connections alive is most of the speed to a busy receiver.
    """
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=30
    )
    return httpx.Client(
        transport=_transport(limits, guarded),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        headers={"User-Agent": user_agent()},
    )


def refused_address(exc: BaseException) -> str | None:
    """The refusal inside an httpx error raised by the guard, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, RefusedAddress):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None
