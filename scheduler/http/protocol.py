"""uvicorn's h11 protocol with the timeouts and the connection cap it lacks.

Why this is written here: uvicorn (0.29 to 0.55 at least) arms its
keep-alive timer only after a response, and cancels it on the first byte of
the next request. So a connection that never sends anything, or sends a
request head or body one byte at a time, stays open for ever, and nothing
caps how many such connections pile up (``limit_concurrency`` answers 503 to
requests but keeps the sockets). No uvicorn option covers it; hypercorn
does, but would replace the whole serving layer. This subclass adds, per
connection:

* an idle timeout (``http.keep_alive_timeout``) from the moment the
  connection opens, not only after a response;
* a deadline for the request line and headers (``http.header_timeout``),
  counted from the first byte of the request;
* a deadline for the body (``http.body_timeout``), counted from the end of
  the headers;
* a deadline for a response the client does not read (``http.send_timeout``),
  counted from when the socket's send buffer filled up (asyncio's
  ``pause_writing``) and cancelled when it drains: a client that pipelines
  requests and never reads the answers otherwise keeps its connection, and
  megabytes of unsent answers, for ever, since a connection whose request is
  complete has no other deadline (the idle timer starts after a response);
* a cap on open connections (``http.max_connections``): one over the cap is
  closed at once.

A connection past a deadline is closed; a request that was waiting for its
body then sees ``http.disconnect``, as with a client that went away. One past
the send deadline is aborted, not closed: ``close`` would wait for the unread
answers to be flushed first, which is what never happens.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` plus header, body and idle deadlines and a connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        send_timeout: float = 30.0,
        max_connections: int = 256,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_phase: str | None = None
        self._send_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.logger.warning(
                "connection refused: %d connections open (http.max_connections)", self.max_connections
            )
            self.transport.close()
            return
        # uvicorn's own idle timer, armed from the start rather than only after a response.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None)
        self._cancel_send_deadline()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The send buffer is full (the client reads slower than we answer): start the send deadline."""
        super().pause_writing()
        if self._send_deadline is None and not self.transport.is_closing():
            self._send_deadline = self.loop.call_later(self.send_timeout, self._send_deadline_passed)

    def resume_writing(self) -> None:
        """The client read enough for the buffer to drain: it is alive, the deadline is off."""
        self._cancel_send_deadline()
        super().resume_writing()

    def _cancel_send_deadline(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _send_deadline_passed(self) -> None:
        self._send_deadline = None
        self.logger.info("connection closed: the client read no response for %gs", self.send_timeout)
        # abort, not close: close waits until the buffer is flushed to a client that does not read.
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track_phase()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track_phase()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, as JSON like every other error.

        uvicorn sends ``text/plain`` "Invalid HTTP request received.": a client
        that reads every error's ``detail`` (the API's contract) got nothing
        to read for a duplicate ``Content-Length``, a NUL in a header or a
        malformed request line. Same status, same ``Connection: close``.
        """
        # uvicorn's message is always "Invalid HTTP request received." (h11 keeps the cause to itself).
        detail = "invalid HTTP request: its request line, a header or the body framing cannot be parsed"
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            output = self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
            output += self.conn.send(h11.Data(data=body)) or b""
            output += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # a response was already under way: nothing more can be said
            self.transport.close()
            return
        self.transport.write(output or b"")
        self.transport.close()

    def _track_phase(self) -> None:
        """Arm the deadline that matches what the peer is sending now, keep it if unchanged."""
        if self.transport.is_closing():
            self._set_deadline(None)
            return
        state = self.conn.their_state
        if state is h11.IDLE and self.conn.trailing_data[0]:
            self._set_deadline("header")  # part of a request head has arrived
        elif state is h11.SEND_BODY:
            self._set_deadline("body")
        else:
            self._set_deadline(None)  # idle (the keep-alive timer runs) or the request is complete

    def _set_deadline(self, phase: str | None) -> None:
        if phase == self._deadline_phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_phase = phase
        if phase is not None:
            seconds = self.header_timeout if phase == "header" else self.body_timeout
            self._deadline = self.loop.call_later(seconds, self._deadline_passed, phase)

    def _deadline_passed(self, phase: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("connection closed: request %s not received in time", phase)
            self.transport.close()


def guarded_protocol(
    *, header_timeout: float, body_timeout: float, max_connections: int, send_timeout: float = 30.0
) -> type[H11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits bound in."""

    class _Bound(GuardedH11Protocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(
                config, server_state, app_state, _loop,
                header_timeout=header_timeout, body_timeout=body_timeout, send_timeout=send_timeout,
                max_connections=max_connections,
            )  # fmt: skip

    return _Bound
