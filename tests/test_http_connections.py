"""Connection hygiene of the real server (uvicorn in a thread): idle, header and body deadlines, a cap.

Each test opens raw sockets to a running :class:`HttpServer` and polls, with a
deadline, until the server has closed the ones it should; no test asserts on
how long something took.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from scheduler.config import HttpConfig
from scheduler.http import HttpServer, create_app
from scheduler.http.routes_schedule import SUBMISSIONS_IN_FLIGHT
from scheduler.models import MAX_BODY_BYTES
from scheduler.producer.publisher import Publisher
from tests.harness import Deployment, wait_until
from tests.test_http_support import settings_for


def serve(dep: Deployment, **http: Any) -> HttpServer:
    settings = settings_for(dep)
    app = create_app(
        store=dep.store, publisher=None, state=None, registry=CollectorRegistry(), settings=settings
    )
    server = HttpServer(app, host="127.0.0.1", port=0, limits=HttpConfig(**http))
    server.start()
    return server


def connect(server: HttpServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (EOF or reset); never blocks."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        while True:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
            if not chunk:
                return True
    except BlockingIOError:
        return False  # a response arrived, the connection is still open
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_idle_connections_are_closed_after_the_keep_alive_timeout(lite: Deployment) -> None:
    server = serve(lite, keep_alive_timeout=0.5, header_timeout=30, max_connections=1000)
    socks = [connect(server) for _ in range(400)]
    try:
        # Half never send anything; the other half finish one request and then sit idle.
        for sock in socks[200:]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: all(closed_by_server(s) for s in socks), 30, "every idle connection to be closed")
    finally:
        for sock in socks:
            sock.close()
        server.stop()


def test_a_connection_in_use_is_kept_open_between_requests(lite: Deployment) -> None:
    server = serve(lite, keep_alive_timeout=30)
    sock = connect(server)
    try:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = wait_until(lambda: _read_some(sock), 10, "a response")
            assert reply.startswith(b"HTTP/1.1 200")
        assert not closed_by_server(sock)
    finally:
        sock.close()
        server.stop()


def _read_some(sock: socket.socket) -> bytes | None:
    readable, _, _ = select.select([sock], [], [], 0)
    return sock.recv(65536) if readable else None


def test_headers_sent_a_byte_at_a_time_hit_the_header_deadline(lite: Deployment) -> None:
    # The idle timer alone restarts on every byte; the header deadline does not.
    server = serve(lite, keep_alive_timeout=0.3, header_timeout=1.0)
    sock = connect(server)
    head = iter(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 10_000)

    def drip_until_closed() -> bool:
        if closed_by_server(sock):
            return True
        try:
            sock.sendall(bytes([next(head)]))
        except (BrokenPipeError, ConnectionResetError):
            return True
        return False

    try:
        wait_until(drip_until_closed, 30, "the slow request head to be cut off", interval=0.1)
    finally:
        sock.close()
        server.stop()


def test_a_body_that_never_completes_hits_the_body_deadline(lite: Deployment) -> None:
    server = serve(lite, keep_alive_timeout=0.3, body_timeout=0.5)
    sock = connect(server)
    try:
        sock.sendall(
            b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"requested_cpu": 1'
        )
        wait_until(lambda: closed_by_server(sock), 30, "the unfinished body to be cut off")
    finally:
        sock.close()
        server.stop()


def test_connections_over_the_cap_are_closed_and_the_others_kept(lite: Deployment) -> None:
    server = serve(lite, keep_alive_timeout=60, max_connections=5)
    first = [connect(server) for _ in range(5)]
    try:
        for sock in first:  # make sure the server accepted these five before the next ones
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_until(lambda s=sock: _read_some(s), 10, "a response")  # type: ignore[misc]
        extra = [connect(server) for _ in range(5)]
        try:
            wait_until(
                lambda: all(closed_by_server(s) for s in extra), 20, "the connections over the cap closed"
            )
            assert not any(closed_by_server(s) for s in first)
        finally:
            for sock in extra:
                sock.close()
        # Room again once one closes.
        first.pop().close()

        def one_more() -> bool:
            sock = connect(server)
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = wait_until(lambda: _read_some(sock) or closed_by_server(sock), 10, "an answer")
                return isinstance(reply, bytes) and reply.startswith(b"HTTP/1.1 200")
            finally:
                sock.close()

        wait_until(one_more, 20, "a new connection to be served after one closed")
    finally:
        for sock in first:
            sock.close()
        server.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_body_limit_holds_at_its_edge_with_or_without_a_content_length(
    lite: Deployment, chunked: bool
) -> None:
    """Exactly 64 KiB is read and planned; a byte more is a 413, declared or counted as it streams."""
    server = serve(lite)
    base = b'{"requested_cpu": 1, "requested_memory": 512}'

    def body(size: int) -> bytes:
        return base[:-1] + b" " * (size - len(base)) + b"}"

    def post(raw: bytes) -> bytes:
        if chunked:
            parts = b"".join(
                b"%x\r\n%s\r\n" % (len(raw[i : i + 4096]), raw[i : i + 4096])
                for i in range(0, len(raw), 4096)
            )
            framing, payload = b"Transfer-Encoding: chunked", parts + b"0\r\n\r\n"
        else:
            framing, payload = b"Content-Length: %d" % len(raw), raw
        head = b"POST /plan HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        head += framing + b"\r\n\r\n"
        with connect(server) as sock:
            sock.sendall(head + payload)
            return wait_until(lambda: _read_some(sock), 10, "a response") or b""

    try:
        assert post(body(MAX_BODY_BYTES)).startswith(b"HTTP/1.1 200")
        too_large = post(body(MAX_BODY_BYTES + 1))
        assert too_large.startswith(b"HTTP/1.1 413") and b"larger than 65536 bytes" in too_large
    finally:
        server.stop()


def reset_by_server(sock: socket.socket) -> bool:
    """True once the server reset the connection; reads nothing (reading would drain its answers)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0


def test_a_client_that_never_reads_its_answers_is_cut_off_at_the_send_deadline(lite: Deployment) -> None:
    """Pipelined requests whose answers are never read: the connection is aborted, the others served.

    Found from outside: ``GET /openapi.json`` pipelined a thousand times on one
    socket that never reads held that connection open with megabytes of
    answers queued for as long as the client liked (no deadline applies once
    a request is complete), so ``http.max_connections`` such sockets shut
    the API for everyone.
    """
    server = serve(lite, keep_alive_timeout=60, header_timeout=60, body_timeout=60, send_timeout=0.5)
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(("127.0.0.1", server.port))
    hog.setblocking(False)
    requests = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 200

    def stuff_until_reset() -> bool:
        if reset_by_server(hog):
            return True
        try:
            hog.send(requests)
        except BlockingIOError:
            pass  # the server stopped reading too: its answers are waiting for us
        except (BrokenPipeError, ConnectionResetError):
            return True
        return False

    try:
        wait_until(stuff_until_reset, 60, "the connection that reads nothing to be aborted", interval=0.05)
        with connect(server) as sock:  # and the server goes on serving
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (wait_until(lambda: _read_some(sock), 10, "a response") or b"").startswith(b"HTTP/1.1 200")
    finally:
        hog.close()
        server.stop()


def test_a_client_that_keeps_reading_is_not_cut_off(lite: Deployment) -> None:
    """The send deadline runs only while nothing is read: a client reading its answers gets every one."""
    server = serve(lite, send_timeout=0.5)
    sock = connect(server)
    try:
        count = 300
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        received = bytearray()

        def read_more() -> bool:
            chunk = _read_some(sock)
            if chunk:
                received.extend(chunk)
            return received.count(b"HTTP/1.1 200 OK") >= count

        wait_until(read_more, 60, "every pipelined answer", interval=0.01)
    finally:
        sock.close()
        server.stop()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /plan HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x00abc\r\n\r\n",
        b"GET /healthz HTTP/9.9 trailing\r\n\r\n",
    ],
    ids=["two-content-lengths", "nul-in-header", "bad-request-line"],
)
def test_a_request_that_cannot_be_parsed_gets_a_json_400(lite: Deployment, request_bytes: bytes) -> None:
    """Found from outside: uvicorn answered these with text/plain "Invalid HTTP request received."."""
    server = serve(lite)
    try:
        with connect(server) as sock:
            sock.sendall(request_bytes)
            reply = bytearray()
            wait_until(lambda: closed_by_server_keeping(sock, reply), 10, "the answer and the close")
        head, _, body = bytes(reply).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body)["detail"].startswith("invalid HTTP request")
    finally:
        server.stop()


def closed_by_server_keeping(sock: socket.socket, into: bytearray) -> bool:
    """Like :func:`closed_by_server`, keeping what was read."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        chunk = sock.recv(65536)
    except ConnectionResetError:
        return True
    into.extend(chunk)
    return not chunk


class SilentBroker:
    """A TCP listener that accepts connections and never says a word: a stalled broker."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.listener.getsockname()[1]}/%2F"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def test_submissions_to_a_silent_broker_leave_threads_for_the_reads_and_end_in_503(lite: Deployment) -> None:
    """Found from outside: 60 ``POST /schedule`` at once while the broker accepted connections and
    never answered held all 40 endpoint threads (each waited for the one declaring the topology, 15 s
    at a time), so ``GET /nodes`` timed out after a minute, and the declaration's handshake timeout
    escaped as a text/plain 500. Now at most SUBMISSIONS_IN_FLIGHT wait for the broker (one more is a
    503 at once), the reads are answered meanwhile, and every submission ends in a JSON 503."""
    broker = SilentBroker()
    settings = settings_for(lite, http={"rate_limit": "100000/second"})
    publisher = Publisher(broker.url, lite.topology)
    registry = CollectorRegistry()
    app = create_app(store=lite.store, publisher=publisher, state=None, registry=registry, settings=settings)
    server = HttpServer(app, host="127.0.0.1", port=0, limits=settings.http)
    server.start()
    answers: list[httpx.Response] = []

    def submit(n: int) -> None:
        body = {"task_id": f"silent-{n}", "requested_cpu": 1, "requested_memory": 256}
        answers.append(httpx.post(f"{server.url}/schedule", json=body, timeout=120))

    submitters = [threading.Thread(target=submit, args=(n,)) for n in range(3 * SUBMISSIONS_IN_FLIGHT)]
    try:
        for thread in submitters:
            thread.start()
        wait_until(lambda: len(broker.accepted) >= SUBMISSIONS_IN_FLIGHT, 30, "submissions at the broker")
        nodes = httpx.get(f"{server.url}/nodes", timeout=60)
        assert nodes.status_code == 200
        assert any(t.is_alive() for t in submitters), "the read was answered while submissions waited"
        for thread in submitters:
            thread.join(120)
        assert len(answers) == len(submitters)
        assert {a.status_code for a in answers} == {503}
        details = [a.json()["detail"] for a in answers]
        busy = sum("already waiting for the broker" in d for d in details)
        assert busy >= len(submitters) - SUBMISSIONS_IN_FLIGHT
        assert any(d.startswith("broker unavailable") for d in details)
    finally:
        server.stop()
        broker.close()
