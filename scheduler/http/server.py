"""uvicorn in a background thread of the worker process, with a start that fails loudly and a clean stop.

Why a thread and not a separate process: the HTTP face reads the worker's
live state (leadership, the in-memory fleet) and shares its database
engine; a thread gets both for free. uvicorn installs signal handlers only
on the main thread, so the worker keeps its own SIGTERM handling.

Why the socket is bound here, before the thread starts: a port already in
use is then an exception from :meth:`HttpServer.start` (the operator sees
it at once), not a log line from a thread that quietly died; and ``port=0``
(tests) yields the real port through :attr:`HttpServer.port`.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, cast

import structlog
import uvicorn

from scheduler.config import HttpConfig
from scheduler.http.protocol import guarded_protocol

log = structlog.get_logger(__name__)


class HttpServer:
    """Serve an ASGI app on ``host:port`` from a daemon thread; :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "0.0.0.0",
        port: int = 8080,
        access_log: bool = False,
        graceful_timeout: float = 5.0,
        limits: HttpConfig | None = None,
        name: str = "http",
    ) -> None:
        """``limits`` supplies the connection timeouts and cap (``http.*``; the defaults when None)."""
        self.app = app
        self.limits = limits or HttpConfig()
        self.name = name
        self.host = host
        self.requested_port = port
        self.access_log = access_log
        self.graceful_timeout = graceful_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with ``port=0``), still known after :meth:`stop`."""
        return self.requested_port if self._port is None else self._port

    @property
    def url(self) -> str:
        """A URL to reach the server from this host (wildcard addresses become loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Bind, start serving, and return once uvicorn accepts connections; raises OSError on a bad port."""
        if self._thread is not None:
            raise RuntimeError("HTTP server already started")
        self._socket = _bind(self.host, self.requested_port)
        self._port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,  # keep the process's structlog set-up; uvicorn's loggers propagate to it
            access_log=self.access_log,
            lifespan="off",
            server_header=False,
            # uvicorn believes X-Forwarded-For/-Proto from 127.0.0.1 by default; the token-less mode
            # listens there only, so any caller could pick the address the rate limit counts.
            proxy_headers=False,
            timeout_graceful_shutdown=int(self.graceful_timeout) or None,
            http=guarded_protocol(
                header_timeout=self.limits.header_timeout,
                body_timeout=self.limits.body_timeout,
                send_timeout=self.limits.send_timeout,
                max_connections=self.limits.max_connections,
            ),
            # uvicorn types it int but only hands it to loop.call_later: fractions work.
            timeout_keep_alive=cast(int, self.limits.keep_alive_timeout),
        )
        server = uvicorn.Server(config)
        self._server = server
        sock = self._socket
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        waited = 0.0
        while not server.started:
            if not self._thread.is_alive():
                self._close_socket()
                raise RuntimeError("HTTP server thread exited during start-up (see the log)")
            if waited >= timeout:
                raise RuntimeError(f"HTTP server did not start within {timeout}s")
            self._thread.join(0.01)
            waited += 0.01
        log.info(f"{self.name} serving", url=f"http://{self.host or '0.0.0.0'}:{self.port}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to the graceful timeout), join the thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        self._close_socket()
        self._server = self._thread = None
        log.info(f"{self.name} stopped")

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (IPv4 or IPv6 from the address)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock
