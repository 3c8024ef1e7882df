"""A webhook receiver for virtflow-scheduler that checks every request before trusting it.

Deliveries are signed per the Standard Webhooks specification
(standardwebhooks.com), so the verification is the ``standardwebhooks``
package's (``pip install standardwebhooks``), not code of ours. It shows
the three things every receiver should do:

1. Verify ``webhook-signature`` over the raw body bytes (before any JSON
   parsing) with the shared ``whsec_`` secret; the library compares in
   constant time. During a secret rotation give both secrets: a request
   verifying under either is authentic.
2. Refuse a ``webhook-timestamp`` more than five minutes away from the local
   clock (the library does), so a captured request cannot be replayed
   later; every retry is signed afresh, so legitimate retries pass.
3. De-duplicate on ``webhook-id`` (the event id, the same on every retry):
   delivery is at least once, so the same event can arrive twice.

Answer 2xx quickly, then do the work; anything else (or no answer within the
scheduler's timeout) is retried with backoff.

Run it::

    WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 9000

and point the scheduler at it with ``WEBHOOK_URL=http://127.0.0.1:9000/hooks``
and the same ``WEBHOOK_SECRET`` (comma separated when rotating). Each
accepted event is printed as one JSON line on stdout; refusals go to stderr
with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

MAX_BODY = 1024 * 1024
Handler = Callable[[str, dict[str, Any]], None]


def check_signature(verifiers: Sequence[Webhook], headers: dict[str, str], body: bytes) -> str | None:
    """None when the request verifies under one of the secrets (and is fresh); otherwise why not."""
    reason = "no secret configured"
    for verifier in verifiers:
        try:
            verifier.verify(body, headers, json_parse=False)
            return None
        except WebhookVerificationError as exc:
            reason = str(exc) or "signature mismatch"
        except (ValueError, UnicodeDecodeError):  # a malformed header or body: not ours
            reason = "malformed signature headers or body"
    return reason


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


def make_server(host: str, port: int, secrets: str | Sequence[str], handle: Handler,
                clock: Callable[[], float] = time.time) -> ThreadingHTTPServer:
    """A threaded HTTP server that calls ``handle(event_type, event)`` once per new, authentic event.

    ``secrets``: one ``whsec_`` secret, or several (a rotation: any one verifies).
    """
    verifiers = [Webhook(s) for s in ([secrets] if isinstance(secrets, str) else list(secrets))]
    seen = SeenDeliveries()

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the scheduler reuses connections

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(413, "body too large")
                return
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            refusal = check_signature(verifiers, headers, body)
            if refusal is not None:
                print(f"refused: {refusal}", file=sys.stderr, flush=True)
                self._answer(401, refusal)
                return
            try:
                event = json.loads(body)
            except ValueError:
                self._answer(400, "body is not JSON")
                return
            delivery_id = headers.get("webhook-id") or str(event.get("id"))
            if delivery_id not in seen:
                try:
                    handle(headers.get("x-scheduler-event") or str(event.get("type")), event)
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


def event_printer() -> Callable[[str, dict[str, Any]], None]:
    """A handler that prints each accepted event as one JSON line on stdout, whole.

    Deliveries are handled on several threads at once, and ``print`` writes
    a line and its newline separately: two events could share a line and
    leave an empty one. Each line is written and flushed in one go, under a
    lock.
    """
    lock = threading.Lock()

    def print_event(event_type: str, event: dict[str, Any]) -> None:
        task = event.get("task") or {}
        node = task.get("node") or {}
        line = json.dumps({
            "id": event.get("id"), "type": event_type, "task_id": task.get("task_id"),
            "status": task.get("status"), "node": node.get("name"), "reason": task.get("reason"),
        })
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    return print_event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secrets = [s.strip() for s in os.environ.get("WEBHOOK_SECRET", "").split(",") if s.strip()]
    if not secrets:
        parser.error("set WEBHOOK_SECRET to the scheduler's whsec_ secret (several: comma separated)")
    server = make_server(args.host, args.port, secrets, event_printer())
    print(f"listening on http://{args.host}:{server.server_port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
