"""A TCP proxy for fault injection between a worker and RabbitMQ or PostgreSQL.

Why by hand: the fault kinds needed here (refuse new connections, reset
every connection, stall traffic and let it through later, blackhole it for
good) each take a few lines over asyncio streams, and the proxy must run in
the test process, on loopback, with no privileges (no iptables, no tc).
Toxiproxy would do it but needs its own server binary.

Modes, set with :meth:`FaultProxy.fault` for a duration or until
:meth:`FaultProxy.heal`:

* ``refuse``: new connections are accepted and closed at once (the client
  sees its connect fail or the connection drop before the handshake ends);
  open connections are reset too;
* ``reset``: every open connection is reset; new ones are served;
* ``stall``: bytes stop moving in both directions and are delivered when the
  fault ends; new connections wait as well;
* ``blackhole``: bytes are swallowed and never delivered; when the fault
  ends the affected connections are closed (their data is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    poisoned: bool = False
    """Touched by a blackhole: its bytes were lost, so it must be closed when the fault ends."""


@dataclass
class FaultProxy:
    """Listen on 127.0.0.1 (a free port) and forward to ``target_host:target_port``."""

    target_host: str
    target_port: int
    port: int = 0
    mode: str = "pass"
    _links: set[_Link] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.base_events.Server | None = None
    _moving: asyncio.Event | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    connections: int = 0

    # ------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- faults
    def url_through(self, url: str) -> str:
        """``url`` (``amqp://``, ``postgresql://``) with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{self.port}")
        if parts.port is None:
            netloc = netloc.replace(str(parts.hostname), f"127.0.0.1:{self.port}")
        return parts._replace(netloc=netloc).geturl()

    def fault(self, mode: str) -> None:
        """Start a fault (``refuse``, ``reset``, ``stall``, ``blackhole``) until :meth:`heal`."""
        assert mode in ("refuse", "reset", "stall", "blackhole"), mode
        self._call(self._set_mode(mode))

    def heal(self) -> None:
        self._call(self._set_mode("pass"))

    @contextmanager
    def during(self, mode: str) -> Iterator[None]:
        self.fault(mode)
        try:
            yield
        finally:
            self.heal()

    def for_seconds(self, mode: str, seconds: float) -> None:
        """Hold a fault for ``seconds`` (blocking), then heal."""
        with self.during(mode):
            time.sleep(seconds)

    # -------------------------------------------------------------- internals
    def _call(self, coro: object) -> None:
        assert self._loop is not None, "proxy not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._moving = asyncio.Event()
            self._moving.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self._ready.set()

        loop.run_until_complete(boot())
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._abort(link)

    async def _set_mode(self, mode: str) -> None:
        assert self._moving is not None
        previous, self.mode = self.mode, mode
        if mode in ("refuse", "reset"):
            for link in list(self._links):
                self._abort(link)
        if mode in ("stall", "blackhole"):
            self._moving.clear()
        else:
            self._moving.set()
        if previous == "blackhole" and mode == "pass":
            for link in list(self._links):
                if link.poisoned:
                    self._abort(link)

    def _abort(self, link: _Link) -> None:
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        assert self._moving is not None
        if self.mode == "blackhole":
            # Never connected upstream: the client waits on a silent peer until the fault ends.
            while self.mode == "blackhole":
                await asyncio.sleep(0.05)
            writer.transport.abort()
            return
        await self._moving.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        await asyncio.gather(self._pump(reader, up_writer, link), self._pump(up_reader, writer, link))
        self._abort(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
        assert self._moving is not None
        try:
            while link in self._links:
                data = await reader.read(65536)
                if not data:
                    break
                if self.mode == "blackhole":
                    link.poisoned = True
                    continue  # swallowed
                if not self._moving.is_set():
                    await self._moving.wait()  # stall: hold the bytes, deliver them later
                    if link.poisoned or link not in self._links:
                        break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
