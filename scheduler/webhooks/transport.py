"""HTTP clients for deliveries: one deadline per attempt, and a connect-time address guard for callbacks.

**One deadline for the whole attempt.** httpx's timeouts bound each socket
operation, not the request: a receiver trickling one byte every three
seconds never trips a five-second read timeout and can hold an attempt
open for minutes. Here every attempt runs inside :func:`deadline`; the
network backend below bounds name resolution, connecting, the TLS
handshake and every read and write by the time *left* of that deadline, so
resolve + connect + send + read together end within ``webhooks.timeout``
(plus the scheduling slack of one socket call). The deadline is per thread:
a sender thread runs one attempt at a time, and pooled connections consult
the deadline of whichever attempt is using them.

**An address guard for callbacks.** A callback URL's host is a name chosen
by whoever submitted the request. Checking its addresses before the request
and letting the HTTP library resolve it again when connecting leaves a gap
(DNS rebinding: the second answer can be 169.254.169.254). The guarded
backend resolves the name itself, refuses the connection if *any* answer is
never to be called (:func:`scheduler.webhooks.policy.address_refusal`) or is
internal (loopback, private, shared, not global:
:func:`scheduler.webhooks.policy.is_internal`) while the host is not named
exactly by a ``webhooks.allow`` pattern, and connects only to the addresses
it checked. TLS is untouched: the certificate is still verified against the
URL's host name.

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
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpcore
import httpx

from scheduler.webhooks.policy import address_refusal, is_internal

WRITE_CHUNK = 16 * 1024  # bytes per socket write, so each one is bounded by the time left

_local = threading.local()


class RefusedAddress(httpcore.ConnectError):
    """A callback host resolved to an address the scheduler does not call; nothing was connected."""


@contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Run the block as one attempt that must end within ``seconds`` (on this thread)."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = time.monotonic() + seconds
    try:
        yield _local.deadline
    finally:
        _local.deadline = previous


def _left(timeout: float | None, kind: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` cut to the time left of this thread's deadline; raises ``kind`` once it has passed."""
    end: float | None = getattr(_local, "deadline", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise kind("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation is bounded by the time left of the current deadline."""

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        for start in range(0, len(view), WRITE_CHUNK):
            self._inner.write(bytes(view[start : start + WRITE_CHUNK]), _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        return DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeliveryBackend(httpcore.SyncBackend):
    """``SyncBackend`` that resolves within the deadline, optionally guards addresses, and bounds streams.

    ``guarded``: refuse never-called addresses, and internal ones unless
    the host is in ``internal_ok`` (hosts named exactly by an allow pattern).
    """

    def __init__(self, *, guarded: bool, internal_ok: frozenset[str], resolver: ThreadPoolExecutor):
        self._guarded = guarded
        self._internal_ok = internal_ok
        self._resolver = resolver
        self._lookups: dict[tuple[str, int], Future[Any]] = {}
        self._lookups_lock = threading.Lock()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._resolve(host, port, timeout)
        if self._guarded:
            self._check(host, addresses)
        last: Exception | None = None
        for text in addresses:
            try:
                left = _left(timeout, httpcore.ConnectTimeout)
                stream = super().connect_tcp(text, port, left, local_address, socket_options)
                return DeadlineStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The host's addresses, in the resolver's order; the lookup is abandoned at the deadline.

        ``getaddrinfo`` cannot be interrupted, so it runs on a small shared
        pool and the attempt stops waiting for it when its time is up.
        """
        bare = host.strip("[]")
        try:
            return [str(ipaddress.ip_address(bare))]  # a literal: nothing to resolve
        except ValueError:
            pass
        left = _left(timeout, httpcore.ConnectTimeout)
        future = self._lookup(host, port)
        try:
            infos = future.result(timeout=left)
        except (FutureTimeout, CancelledError):
            # Still queued: never run it. A lookup nobody waits for any more would otherwise
            # take a resolver thread later, behind which every other host's lookups wait.
            future.cancel()
            raise httpcore.ConnectTimeout(f"resolving {host} outlasted the attempt's deadline") from None
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[str] = []
        for info in infos:
            text = str(info[4][0])
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        return addresses

    def _lookup(self, host: str, port: int) -> Future[Any]:
        """The lookup of ``host:port`` under way, or a new one: one resolver thread per name at most.

        Attempts to a host whose name server does not answer all wait on the
        same lookup instead of taking a resolver thread each, so one such
        host (a callback name chosen by a submitter) cannot take them all.
        """
        key = (host, port)
        with self._lookups_lock:
            future = self._lookups.get(key)
            if future is not None and not future.cancelled():
                return future
            future = self._resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
            self._lookups[key] = future
        # Outside the lock: a lookup already done runs the callback here, and it takes the lock.
        future.add_done_callback(lambda done: self._forget(key, done))
        return future

    def _forget(self, key: tuple[str, int], done: Future[Any]) -> None:
        with self._lookups_lock:
            if self._lookups.get(key) is done:
                del self._lookups[key]

    def _check(self, host: str, addresses: list[str]) -> None:
        name = host.strip("[]").lower().rstrip(".")
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            refusal = address_refusal(ip)
            if refusal is not None:
                raise RefusedAddress(f"{name} resolves to a refused {refusal}")
            if is_internal(ip) and name not in self._internal_ok:
                raise RefusedAddress(
                    f"{name} resolves to the internal address {ip}: allowed only for a host "
                    "that a webhooks.allow pattern names exactly"
                )


def user_agent() -> str:
    try:
        return f"virtflow-scheduler-webhooks/{version('virtflow-scheduler')}"
    except PackageNotFoundError:  # a plain checkout
        return "virtflow-scheduler-webhooks"


def make_client(
    *,
    timeout: float,
    concurrency: int,
    guarded: bool,
    internal_ok: frozenset[str] = frozenset(),
    resolver: ThreadPoolExecutor | None = None,
) -> httpx.Client:
    """A client for deliveries: deadline-bounded, no redirects, no env proxies.

    Use it inside :func:`deadline` for the overall bound; outside one, each
    operation is bounded by ``timeout`` as httpx does. One client per
    dispatcher and kind (configured URLs, callbacks), shared by its sending
    threads: httpx's pool is thread-safe and keeping connections alive is
    most of the speed to a busy receiver.
    """
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=30
    )
    backend = DeliveryBackend(
        guarded=guarded,
        internal_ok=internal_ok,
        resolver=resolver or ThreadPoolExecutor(4, thread_name_prefix="webhook-dns"),
    )
    transport = httpx.HTTPTransport(limits=limits)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return httpx.Client(
        transport=transport,
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
