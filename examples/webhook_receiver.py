"""A webhook receiver for virtflow-scheduler that checks every request before trusting it.

Standard library only, so it can be copied anywhere. It shows the three
things every receiver should do:

1. Verify ``X-Scheduler-Signature`` = ``sha256=`` HMAC-SHA256(secret,
   ``"<X-Scheduler-Timestamp>.<raw body>"``), comparing in constant time,
   over the raw bytes (before any JSON parsing).
2. Reject a timestamp more than five minutes away from the local clock, so
   a captured request cannot be replayed later (every retry is signed
   afresh, so legitimate retries pass).
3. De-duplicate on ``X-Scheduler-Delivery`` (the event id, the same on every
   retry): delivery is at least once, so the same event can arrive twice.

Answer 2xx quickly, then do the work; anything else (or no answer within the
scheduler's timeout) is retried with backoff.

Run it::

    WEBHOOK_SECRET=s3cret python examples/webhook_receiver.py --port 9000

and point the scheduler at it with ``WEBHOOK_URL=http://127.0.0.1:9000/hooks``
and the same ``WEBHOOK_SECRET``. Each accepted event is printed as one JSON
line on stdout; refusals go to stderr with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_SECONDS = 300  # five minutes
MAX_BODY = 1024 * 1024
Handler = Callable[[str, dict[str, Any]], None]


def check_signature(secret: str, timestamp: str | None, signature: str | None, body: bytes,
                    now: float, tolerance: float = TOLERANCE_SECONDS) -> str | None:
    """None when the request is authentic and fresh; otherwise why it is refused."""
    if not timestamp or not signature:
        return "missing X-Scheduler-Timestamp or X-Scheduler-Signature"
    try:
        sent_at = int(timestamp)
    except ValueError:
        return "X-Scheduler-Timestamp is not an integer"
    if abs(now - sent_at) > tolerance:
        return f"timestamp {sent_at} is outside the {tolerance:.0f} s window (replay or clock skew)"
    mac = hmac.new(secret.encode("utf-8"), f"{sent_at}.".encode() + body, hashlib.sha256)
    expected = f"sha256={mac.hexdigest()}"
    offered = [part.strip() for part in signature.split(",")]
    if not any(hmac.compare_digest(expected.encode(), part.encode()) for part in offered):
        return "signature mismatch"
    return None


class SeenDeliveries:
    """Event ids already handled, forgotten after ``ttl`` seconds or beyond ``capacity`` (oldest first).

    Keep them longer than the scheduler's whole retry schedule (about nine
    minutes with the defaults; a day is a safe choice); a database table
    with a unique key does the same job across restarts and replicas.
    """

    def __init__(self, ttl: float = 86400, capacity: int = 100_000):
        self.ttl = ttl
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, delivery_id: str) -> bool:
        with self._lock:
            return delivery_id in self._seen

    def add(self, delivery_id: str, now: float) -> None:
        """Remember ``delivery_id`` (call it once the event was handled, not before)."""
        with self._lock:
            while self._seen and (
                len(self._seen) >= self.capacity or next(iter(self._seen.values())) < now - self.ttl
            ):
                self._seen.popitem(last=False)
            self._seen[delivery_id] = now


def make_server(host: str, port: int, secret: str, handle: Handler,
                clock: Callable[[], float] = time.time) -> ThreadingHTTPServer:
    """A threaded HTTP server that calls ``handle(event_type, event)`` once per new, authentic event."""
    seen = SeenDeliveries()

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the scheduler reuses connections

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(413, "body too large")
                return
            body = self.rfile.read(length)
            refusal = check_signature(secret, self.headers.get("X-Scheduler-Timestamp"),
                                      self.headers.get("X-Scheduler-Signature"), body, clock())
            if refusal is not None:
                print(f"refused: {refusal}", file=sys.stderr, flush=True)
                self._answer(401, refusal)
                return
            try:
                event = json.loads(body)
            except ValueError:
                self._answer(400, "body is not JSON")
                return
            delivery_id = self.headers.get("X-Scheduler-Delivery") or str(event.get("id"))
            if delivery_id not in seen:
                try:
                    handle(self.headers.get("X-Scheduler-Event") or str(event.get("type")), event)
                except Exception as exc:  # not handled: say so, and the scheduler sends it again
                    print(f"handler failed for {delivery_id}: {exc!r}", file=sys.stderr, flush=True)
                    self._answer(500, "handler failed")
                    return
                seen.add(delivery_id, clock())
            self._answer(204, "")  # duplicates are acknowledged too, or they would be retried

        def _answer(self, code: int, text: str) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: no access log
            pass

    return ThreadingHTTPServer((host, port), Receiver)


def print_event(event_type: str, event: dict[str, Any]) -> None:
    task = event.get("task") or {}
    node = task.get("node") or {}
    print(json.dumps({"id": event.get("id"), "type": event_type, "task_id": task.get("task_id"),
                      "status": task.get("status"), "node": node.get("name"), "reason": task.get("reason")}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not secret:
        parser.error("set WEBHOOK_SECRET to the scheduler's webhooks.secret")
    server = make_server(args.host, args.port, secret, print_event)
    print(f"listening on http://{args.host}:{server.server_port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
