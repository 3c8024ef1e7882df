"""The webhook dispatcher against real HTTP receivers on loopback and a real database (SQLite and PostgreSQL).

Outbox events come from :meth:`Store.commit` with real placements, failures
and releases, exactly as the worker writes them. Receivers are
``http.server`` servers in threads whose answers each test scripts. Nothing
sleeps in the hope that something happened: every wait polls a condition
with a deadline, and "nothing happened" is asserted after the dispatcher
has provably run a number of cycles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from scheduler.config import WebhooksConfig
from scheduler.models import Reason, SchedulingRequest
from scheduler.store import Failure, Placement, Release, Store
from scheduler.store.deliveries import DeliveryRecord, DeliveryStore
from scheduler.store.schema import deliveries, outbox
from scheduler.webhooks import WebhookDispatcher, new_secret
from tests.harness import make_nodes, wait_until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5"  # a 30-byte key
OTHER_SECRET = "whsec_b3RoZXItd2ViaG9vay1zZWNyZXQtOTg3NjU0MzIx"


def verify(secret: str, headers: dict[str, str], body: bytes) -> int:
    """Check a delivery with the ``standardwebhooks`` package (not this project's code); its timestamp."""
    Webhook(secret).verify(body, headers, json_parse=False)
    return int(headers["webhook-timestamp"])


# ------------------------------------------------------------------ receivers


@dataclass(frozen=True)
class Hit:
    """One request a receiver got, and what it answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    nth: int  # 1 for the first request with this delivery id at this path

    @property
    def delivery(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


Responder = Callable[[str, dict[str, str], bytes, int], int]
"""(path, headers, body, nth) -> status code; may sleep or block to be slow."""


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 in a thread, answering as ``respond`` says."""

    respond: Responder = lambda path, headers, body, nth: 204
    hits: list[Hit] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                declared = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(declared)
                if len(body) < declared:
                    # The sender died mid-request (a killed leader): no complete
                    # request arrived and nobody is waiting for the answer.
                    self.close_connection = True
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                key = (self.path, headers.get("webhook-id", ""))
                with receiver._lock:
                    nth = receiver._counts[key] = receiver._counts.get(key, 0) + 1
                status = receiver.respond(self.path, headers, body, nth)
                with receiver._lock:
                    receiver.hits.append(Hit(self.path, headers, body, status, nth))
                payload = b"nope" if status >= 300 else b""
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    if status in (429, 503):
                        self.send_header("Retry-After", "0")
                    if status in (301, 302, 307, 308):
                        self.send_header("Location", receiver.url("/elsewhere"))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the dispatcher gave up waiting (a timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def snapshot(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)

    def ok_hits(self, path: str | None = None) -> list[Hit]:
        return [h for h in self.snapshot() if 200 <= h.status < 300 and (path is None or h.path == path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(respond: Responder | None = None) -> Receiver:
        r = Receiver(respond) if respond else Receiver()
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# ------------------------------------------------------------------ database and dispatchers


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.from_url(db_url)
    s.upgrade()
    s.import_nodes(make_nodes(4))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def dispatchers() -> Iterator[Callable[..., WebhookDispatcher]]:
    started: list[WebhookDispatcher] = []

    def start(store: Store, config: WebhooksConfig, leader: Callable[[], bool] = lambda: True,
              **kwargs: Any) -> WebhookDispatcher:
        kwargs.setdefault("poll_interval", 0.02)
        d = WebhookDispatcher(store, config, leader, **kwargs)
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop(timeout=10)


def config(*urls: str, **overrides: Any) -> WebhooksConfig:
    """Tiny backoffs so retries happen in milliseconds."""
    values: dict[str, Any] = {
        "urls": list(urls), "secrets": [SECRET], "max_attempts": 5, "timeout": 2, "concurrency": 8,
        "initial_backoff": 0.01, "max_backoff": 0.05,
    }  # fmt: skip
    values.update(overrides)
    return WebhooksConfig.model_validate(values)


def request(task_id: str, callback_url: str | None = None) -> SchedulingRequest:
    return SchedulingRequest(task_id=task_id, requested_cpu=1, requested_memory=512,
                             callback_url=callback_url)


def place(store: Store, *task_ids: str, callback_url: str | None = None) -> list[str]:
    """Commit placements (as the worker does); returns the outbox event ids."""
    items = [Placement(request(t, callback_url), "bm-0000", "10.0.0.0", "least_loaded", "placed", 1)
             for t in task_ids]
    return list(store.commit(items, epoch=1).event_ids)


def release(store: Store, *task_ids: str) -> list[str]:
    return list(store.commit([Release(t) for t in task_ids], epoch=1).event_ids)


def fail(store: Store, *task_ids: str) -> list[str]:
    items = [Failure(t, request(t).model_dump_json(), Reason.INSUFFICIENT_RESOURCES, "0/4 nodes fit", None, 1,
                     None) for t in task_ids]
    return list(store.commit(items, epoch=1).event_ids)


def rows(store: Store) -> list[DeliveryRecord]:
    return DeliveryStore(store.engine).list_deliveries()


def by_event(store: Store, url: str | None = None) -> dict[str, DeliveryRecord]:
    return {r.event_id: r for r in rows(store) if url is None or r.url == url}


def all_delivered(store: Store, count: int) -> bool:
    found = rows(store)
    return len(found) == count and all(r.status == "delivered" for r in found)


def payloads(store: Store) -> dict[str, str]:
    with store.engine.connect() as conn:
        return {e: p for e, p in conn.execute(select(outbox.c.event_id, outbox.c.payload))}


def run_cycles(dispatcher: WebhookDispatcher, n: int, timeout: float = 10) -> None:
    """Wait until the dispatcher has run ``n`` more cycles: the way to assert that nothing happens."""
    target = dispatcher.stats().cycles + n
    wait_until(lambda: dispatcher.stats().cycles >= target, timeout, f"{n} dispatcher cycles")


# ------------------------------------------------------------------ tests


def test_events_are_delivered_signed_with_the_exact_outbox_body(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    rx = receivers()
    events = place(store, "a", "b", "c") + release(store, "a") + fail(store, "d")
    dispatchers(store, config(rx.url()))
    wait_until(lambda: all_delivered(store, 5), 15, "5 deliveries")
    hits = rx.snapshot()
    assert sorted(h.delivery for h in hits) == sorted(events)
    stored = payloads(store)
    for hit in hits:
        assert hit.body == stored[hit.delivery].encode(), "the body is the outbox payload, byte for byte"
        assert verify(SECRET, hit.headers, hit.body) == int(hit.headers["webhook-timestamp"])
        assert hit.headers["content-type"] == "application/json"
        assert hit.headers["x-scheduler-event"] == hit.event["type"]
        assert hit.delivery == hit.event["id"]
        assert "virtflow-scheduler" in hit.headers["user-agent"]
    types = sorted(h.event["type"] for h in hits)
    assert types == ["task.failed", "task.released", "task.scheduled", "task.scheduled", "task.scheduled"]
    scheduled = next(h.event for h in hits if h.event["task"]["task_id"] == "b")
    assert scheduled["task"]["node"] == {"name": "bm-0000", "ip": "10.0.0.0"}
    assert all(r.attempts == 1 and r.delivered_at is not None for r in rows(store))


def test_the_example_receiver_accepts_deliveries_and_acknowledges_duplicates(
    store: Store, dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    import importlib.util

    path = ROOT / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    handled: list[str] = []
    server = example.make_server("127.0.0.1", 0, SECRET, lambda kind, event: handled.append(event["id"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        events = place(store, "x", "y")
        first = dispatchers(store, config(f"http://127.0.0.1:{server.server_port}/hooks"))
        wait_until(lambda: all_delivered(store, 2), 15, "2 deliveries")
        assert sorted(handled) == sorted(events)
        # The same event again (at least once means it can happen): acknowledged, not handled twice.
        with store.engine.begin() as conn:
            conn.execute(update(deliveries).values(status="pending", next_attempt_at=_now()))
        wait_until(lambda: all_delivered(store, 2), 15, "2 re-deliveries")
        assert sorted(handled) == sorted(events)
        # A wrong secret is refused with 401 and retried (here until dead).
        first.stop()
        bad = config(f"http://127.0.0.1:{server.server_port}/other", secrets=[OTHER_SECRET], max_attempts=2)
        place(store, "z")
        dispatchers(store, bad)
        wait_until(lambda: any(r.status == "dead" for r in rows(store)), 15, "the forged delivery to die")
        dead = [r for r in rows(store) if r.status == "dead"]
        assert dead[0].last_status_code == 401 and "No matching signature" in (dead[0].last_error or "")
    finally:
        server.shutdown()
        server.server_close()


def test_a_receiver_failing_n_times_gets_the_event_on_attempt_n_plus_1_with_the_same_delivery_id(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    n = 3
    rx = receivers(lambda path, headers, body, nth: 500 if nth <= n else 200)
    (event,) = place(store, "flaky")
    dispatchers(store, config(rx.url(), max_attempts=n + 1))
    wait_until(lambda: all_delivered(store, 1), 15, "the delivery")
    hits = rx.snapshot()
    assert [h.status for h in hits] == [500] * n + [200]
    assert {h.delivery for h in hits} == {event}
    for hit in hits:  # every attempt is signed afresh, and verifies
        verify(SECRET, hit.headers, hit.body)
    record = by_event(store)[event]
    assert record.attempts == n + 1 and record.last_status_code == 200 and record.last_error is None


def test_timeouts_and_errors_are_retried_and_recorded(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    gate = threading.Event()

    def respond(path: str, headers: dict[str, str], body: bytes, nth: int) -> int:
        if nth == 1:
            time.sleep(1.0)  # longer than the 0.3 s timeout
            return 200
        if nth == 2:
            gate.wait(10)  # hold attempt 2 while the test reads what attempt 1 left
            return 503
        return 200

    rx = receivers(respond)
    (event,) = place(store, "slow")
    dispatchers(store, config(rx.url(), timeout=0.3))

    def after_first() -> DeliveryRecord | None:
        record = by_event(store).get(event)
        return record if record is not None and record.attempts == 1 else None

    first = wait_until(after_first, 10, "the first attempt to time out")
    assert first.status == "pending" and "read timeout" in (first.last_error or "")
    gate.set()
    wait_until(lambda: all_delivered(store, 1), 15, "the delivery")
    assert by_event(store)[event].attempts == 3
    assert [h.nth for h in rx.snapshot()][-1] == 3


def test_redirects_are_not_followed_and_no_secret_reaches_the_logs(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher],
    capfd: pytest.CaptureFixture[str], tmp_path: Path, db_url: str,
) -> None:
    rx = receivers(lambda path, headers, body, nth: 307 if path.startswith("/hook") else 204)
    url = rx.url("/hook?token=tok-123").replace("http://", "http://bot:hunter2@")
    (event,) = place(store, "moved")
    dispatchers(store, config(url, max_attempts=2))
    wait_until(lambda: by_event(store).get(event) and by_event(store)[event].status == "dead", 15, "dead")
    record = by_event(store)[event]
    assert record.last_status_code == 307
    assert record.last_error == f"HTTP 307: redirect to {rx.url('/elsewhere')} not followed"
    paths = [h.path for h in rx.snapshot()]
    assert paths == ["/hook?token=tok-123"] * 2, "the redirect target is never called"
    assert rx.snapshot()[0].headers["authorization"].startswith("Basic ")  # credentials in the URL do work
    logged = "".join(capfd.readouterr())
    assert "webhook delivery dead" in logged
    for secret in (SECRET, "hunter2", "tok-123"):
        assert secret not in logged
        assert secret not in (record.last_error or "")
    listed = CliRunner().invoke(_cli(), ["webhooks", "list", "--json"], env=_cli_env(db_url, tmp_path))
    assert listed.exit_code == 0 and "bot:***" not in listed.output and "***@127.0.0.1" in listed.output
    assert "hunter2" not in listed.output and "tok-123" not in listed.output


def test_a_dead_receiver_ends_dead_after_max_attempts_and_retry_revives_it(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher],
    db_url: str, tmp_path: Path,
) -> None:
    healthy = threading.Event()
    rx = receivers(lambda path, headers, body, nth: 200 if healthy.is_set() else 500)
    closed = f"http://127.0.0.1:{_closed_port()}/hook"  # nothing listens: connection refused
    (event,) = place(store, "doomed")
    d = dispatchers(store, config(rx.url(), closed, max_attempts=3))
    wait_until(lambda: [r.status for r in rows(store)] == ["dead", "dead"], 15, "both deliveries to die")
    run_cycles(d, 10)
    assert len(rx.snapshot()) == 3, "no attempt after the last one"
    records = by_event(store, rx.url())[event], by_event(store, closed)[event]
    assert records[0].attempts == 3 and records[0].last_status_code == 500
    assert records[0].last_error is not None and records[0].last_error.startswith("HTTP 500")
    assert records[1].attempts == 3 and "ConnectError" in (records[1].last_error or "")

    env = _cli_env(db_url, tmp_path)
    listed = CliRunner().invoke(_cli(), ["webhooks", "list", "--failed", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    lines = [json.loads(line) for line in listed.output.splitlines()]
    assert {(x["status"], x["attempts"], x["type"], x["task_id"]) for x in lines} == {
        ("dead", 3, "task.scheduled", "doomed")
    }
    table = CliRunner().invoke(_cli(), ["webhooks", "list"], env=env)
    assert "HTTP 500" in table.output and "2 dead" in table.output

    healthy.set()
    # The real command, as an operator runs it: by delivery id.
    out = subprocess.run([sys.executable, "-m", "scheduler", "webhooks", "retry", str(records[0].id)],
                         env={**os.environ, **env}, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1 delivery queued" in out.stdout
    wait_until(lambda: by_event(store, rx.url())[event].status == "delivered", 15, "the revived delivery")
    revived = by_event(store, rx.url())[event]
    assert revived.attempts == 1, "retry starts the count again"
    assert [h.delivery for h in rx.snapshot()] == [event] * 4, "the same delivery id, again"
    again = CliRunner().invoke(_cli(), ["webhooks", "retry", "--all-failed"], env=env)
    assert again.exit_code == 0 and "1 delivery queued" in again.output  # the closed port's
    delivered = CliRunner().invoke(_cli(), ["webhooks", "retry", str(revived.id)], env=env)
    assert "was delivered" in str(delivered.exception), "a delivered delivery is not sent again"


def test_order_is_kept_per_task_and_a_dead_event_does_not_block_the_next(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    def respond(path: str, headers: dict[str, str], body: bytes, nth: int) -> int:
        event = json.loads(body)
        if event["task"]["task_id"] == "doomed" and event["type"] == "task.scheduled":
            return 500  # dies after max_attempts
        if event["type"] == "task.scheduled" and nth <= 2:
            return 503  # the earlier event needs three attempts
        return 204

    rx = receivers(respond)
    tasks = [f"t{i}" for i in range(12)] + ["doomed"]
    place(store, *tasks)
    release(store, *tasks)
    dispatchers(store, config(rx.url(), max_attempts=3, concurrency=4))
    ended = lambda: len([r for r in rows(store) if r.status != "pending"]) == 26  # noqa: E731
    wait_until(ended, 20, "every delivery to end")
    final = {(r.task_id, r.event_type): r.status for r in rows(store)}
    assert final[("doomed", "task.scheduled")] == "dead"
    assert final[("doomed", "task.released")] == "delivered"
    assert all(status == "delivered" for (task, _), status in final.items() if task != "doomed")
    for task in tasks:
        seen = [(h.event["type"], h.status) for h in rx.snapshot() if h.event["task"]["task_id"] == task]
        released_at = seen.index(("task.released", 204))
        before = seen[:released_at]
        assert all(kind == "task.scheduled" for kind, _ in before), f"{task}: released sent early: {seen}"
        assert len(before) == 3, f"{task}: scheduled must end (delivered or dead) first: {seen}"


def test_a_parked_later_event_is_sent_as_soon_as_its_earlier_one_is_delivered(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    gate = threading.Event()

    def respond(path: str, headers: dict[str, str], body: bytes, nth: int) -> int:
        if json.loads(body)["type"] == "task.scheduled":
            gate.wait(30)  # the earlier events stay in flight until the test lets them through
        return 204

    rx = receivers(respond)
    tasks = [f"p{i}" for i in range(5)]
    place(store, *tasks)
    release(store, *tasks)
    # Two senders, attempts that hang until the gate opens, a 65 s claim lease: each released event
    # waits behind its scheduled one, which is running or waiting its turn.
    d = dispatchers(store, config(rx.url(), concurrency=2, timeout=10), poll_interval=0.2)
    wait_until(lambda: d.stats().in_flight >= 2, 10, "scheduled events in flight")
    # Other tasks' events wait too: the destination is at its limit, and the dispatcher idles a while.
    place(store, *[f"filler{i}" for i in range(30)])
    wait_until(lambda: len(rows(store)) == 40, 10, "the fillers' deliveries")
    run_cycles(d, 5)
    assert not [h for h in rx.snapshot() if h.event["type"] == "task.released"], "a released event went first"
    gate.set()
    started = time.monotonic()
    wait_until(lambda: all_delivered(store, 40), 15, "all 40 deliveries")
    assert time.monotonic() - started < 10, "parked events waited for the claim lease"
    order = [(h.event["task"]["task_id"], h.event["type"]) for h in rx.snapshot()]
    for task in tasks:
        assert order.index((task, "task.scheduled")) < order.index((task, "task.released"))


def test_nothing_is_dispatched_while_not_leading(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    leading = threading.Event()
    rx = receivers()
    first = place(store, "a", "b")
    d = dispatchers(store, config(rx.url()), leader=leading.is_set)
    run_cycles(d, 10)
    assert rx.snapshot() == [] and rows(store) == [], "a standby neither sends nor expands"
    with store.engine.connect() as conn:
        assert conn.execute(select(outbox.c.dispatched)).scalars().all() == [False, False]
    leading.set()
    wait_until(lambda: all_delivered(store, 2), 15, "deliveries once leading")
    assert sorted(h.delivery for h in rx.snapshot()) == sorted(first)
    leading.clear()
    run_cycles(d, 3)  # it has seen that it does not lead any more
    place(store, "c")
    run_cycles(d, 10)
    assert len(rx.snapshot()) == 2 and len(rows(store)) == 2
    leading.set()
    wait_until(lambda: all_delivered(store, 3), 15, "the third delivery once leading again")


def test_a_dispatcher_killed_mid_deliveries_loses_no_event(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher],
    db_url: str, tmp_path: Path,
) -> None:
    def slow(path: str, headers: dict[str, str], body: bytes, nth: int) -> int:
        time.sleep(0.1)
        return 204

    rx = receivers(slow)
    events = place(store, *[f"k{i}" for i in range(40)])
    cfg = config(rx.url(), concurrency=4)
    script = tmp_path / "leader.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        from scheduler.config import WebhooksConfig
        from scheduler.store import Store
        from scheduler.webhooks import WebhookDispatcher, new_secret
        store = Store.from_url(sys.argv[1])
        config = WebhooksConfig.model_validate({**json.loads(sys.argv[2]), "secrets": [sys.argv[3]]})
        WebhookDispatcher(store, config, lambda: True, poll_interval=0.02, claim_lease=1.0).start()
        time.sleep(600)
    """))
    plain = cfg.model_dump_json(exclude={"secrets"})  # a dump shows no secret: it is passed on its own
    leader = subprocess.Popen([sys.executable, str(script), db_url, plain, SECRET],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(rx.ok_hits()) >= 8, 30, "the first leader to deliver some events")
        leader.send_signal(signal.SIGKILL)  # mid-deliveries: requests in flight, claims held
        leader.wait(10)
    finally:
        if leader.poll() is None:
            leader.kill()
    delivered_before = len(rx.ok_hits())
    assert delivered_before < 40, "the kill came too late to prove anything"
    dispatchers(store, cfg, claim_lease=1.0)  # the next leader
    wait_until(lambda: all_delivered(store, 40), 30, "every event delivered by the next leader")
    assert {h.delivery for h in rx.ok_hits()} == set(events), "at least once: every event arrived"


def test_callback_urls_are_delivered_only_when_allowed_and_rechecked_before_each_attempt(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    rx = receivers(lambda path, headers, body, nth: 500 if path == "/later/cb" else 204)
    allowed, forbidden, later = rx.url("/allowed/cb"), rx.url("/forbidden"), rx.url("/later/cb")
    metadata = "http://169.254.169.254/latest/meta-data/"
    place(store, "ok", callback_url=allowed)
    place(store, "evil", callback_url=forbidden)
    place(store, "imds", callback_url=metadata)
    place(store, "changed", callback_url=later)
    allow = [rx.url("/allowed/*"), rx.url("/later/*")]
    first = dispatchers(store, config(rx.url("/hook"), allow=allow, max_attempts=100))
    wait_until(lambda: len(rx.ok_hits("/hook")) == 4 and rx.ok_hits("/allowed/cb")
               and any(h.path == "/later/cb" for h in rx.snapshot()), 15, "configured and allowed deliveries")
    first.stop()
    calls_while_allowed = [h.path for h in rx.snapshot()].count("/later/cb")
    # The operator narrows the allow-list; the next leader must not call /later any more.
    second = dispatchers(store, config(rx.url("/hook"), allow=[rx.url("/allowed/*")]))
    DeliveryStore(store.engine).retry(ids=[r.id for r in rows(store) if r.url == later], now=_now())
    wait_until(lambda: by_event_url(store, later) == "dead", 15, "the no-longer-allowed callback to die")
    run_cycles(second, 5)
    paths = [h.path for h in rx.snapshot()]
    assert "/forbidden" not in paths
    assert paths.count("/later/cb") == calls_while_allowed, "never called once refused"
    reasons = {r.url: r.last_error or "" for r in rows(store) if r.status == "dead"}
    assert "matches no pattern in webhooks.allow" in reasons[forbidden]
    assert "link-local" in reasons[metadata]
    assert reasons[later].startswith("refused:") and "matches no pattern" in reasons[later]
    refused = [r for r in rows(store) if r.url in (forbidden, metadata)]
    assert all(r.attempts == 0 for r in refused), "refused, never attempted"
    statuses = {r.url: r.status for r in rows(store) if r.url != rx.url("/hook")}
    assert statuses[allowed] == "delivered"


def by_event_url(store: Store, url: str) -> str | None:
    found = [r.status for r in rows(store) if r.url == url]
    return found[0] if found else None


def test_dispatcher_thread_is_not_the_callers_and_stop_is_prompt(
    store: Store, receivers: Callable[..., Receiver]
) -> None:
    """``start`` returns while the receiver still holds every request; ``stop`` waits for them.

    The receiver answers only once this thread opens the gate, after ``start``
    returned and the four requests are seen in flight: a ``start`` that sent
    on the caller's thread would never get there (it would wait out the
    receiver's minute and fail the deliveries). No clock is read.
    """
    release_gate = threading.Event()
    rx = receivers(lambda path, headers, body, nth: 204 if release_gate.wait(60) else 500)
    place(store, *[f"s{i}" for i in range(4)])
    d = WebhookDispatcher(store, config(rx.url(), timeout=90), lambda: True, poll_interval=0.02)
    d.start()
    wait_until(lambda: d.stats().in_flight == 4, 30, "requests in flight while the receiver holds them")
    release_gate.set()
    d.stop(timeout=10)
    assert not d.running
    assert all_delivered(store, 4), "stop waits for attempts in flight and records them"


def test_an_attempt_ends_at_its_deadline_even_when_the_receiver_trickles(
    store: Store, dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    """A receiver sending one byte every 0.2 s never trips a per-read timeout; the attempt's deadline does."""
    trickle = TrickleReceiver(every=0.2, lasts=30)
    try:
        (event,) = place(store, "trickled")
        dispatchers(store, config(trickle.url, timeout=1, max_attempts=2))
        ended = wait_until(lambda: trickle.held, 20, "the first trickled attempt to be cut off")
        assert ended[0] < 1 + 3, f"the attempt was held {ended[0]:.1f} s with timeout 1 s"
        record = wait_until(lambda: (r := by_event(store).get(event)) and r.attempts >= 1 and r, 10,
                            "the attempt recorded")
        assert "timeout" in (record.last_error or "") or record.status == "dead"
    finally:
        trickle.close()


def test_a_hanging_receiver_does_not_starve_the_others(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    gate = threading.Event()
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def hang(path: str, headers: dict[str, str], body: bytes, nth: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        gate.wait(30)
        with lock:
            running[0] -= 1
        return 204

    hanging, fast = receivers(hang), receivers()
    place(store, *[f"h{i}" for i in range(30)])
    dispatchers(store, config(hanging.url(), fast.url(), concurrency=4, per_destination=2, timeout=20,
                              max_attempts=3))
    try:
        # Four senders, and every one of them would be stuck on the hanging receiver without the limit.
        wait_until(lambda: len(fast.ok_hits()) == 30, 15, "every delivery to the fast receiver")
        assert hanging.ok_hits() == [], "the hanging receiver really hung throughout"
        assert running[1] <= 2, f"{running[1]} attempts at once to one destination (limit 2)"
    finally:
        gate.set()
    wait_until(lambda: all_delivered(store, 60), 60, "the hanging receiver's deliveries, once it answers")
    assert running[1] <= 2


def test_a_payload_that_is_not_strict_json_is_dead_and_never_sent(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    rx = receivers()
    bad, good = place(store, "nan", "fine")
    with store.engine.begin() as conn:  # written elsewhere: the dispatcher is the last line of defence
        conn.execute(update(outbox).where(outbox.c.event_id == bad)
                     .values(payload='{"id": "x", "task": {"attempts": NaN, "score": Infinity}}'))
    d = dispatchers(store, config(rx.url()))
    wait_until(lambda: {r.status for r in rows(store)} == {"dead", "delivered"}, 15, "both to end")
    record = by_event(store)[bad]
    assert record.status == "dead" and record.attempts == 0
    assert (record.last_error or "").startswith("invalid payload: not strict JSON")
    assert [h.delivery for h in rx.snapshot()] == [good]
    assert d.stats().invalid == 1 and d.running, "a bad payload is an outcome, not a crash"


def test_during_a_secret_rotation_each_delivery_verifies_with_either_secret(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    rx = receivers()
    place(store, "r1", "r2")
    dispatchers(store, config(rx.url(), secrets=[SECRET, OTHER_SECRET]))
    wait_until(lambda: all_delivered(store, 2), 15, "2 deliveries")
    for hit in rx.snapshot():
        assert len(hit.headers["webhook-signature"].split(" ")) == 2
        verify(SECRET, hit.headers, hit.body)
        verify(OTHER_SECRET, hit.headers, hit.body)
        with pytest.raises(WebhookVerificationError):
            verify(new_secret(), hit.headers, hit.body)


def test_unsigned_delivery_only_when_allowed_and_with_a_warning(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher],
    capfd: pytest.CaptureFixture[str],
) -> None:
    rx = receivers()
    with pytest.raises(ValueError, match="allow_unsigned"):
        WebhookDispatcher(store, config(rx.url(), secrets=[]), lambda: True)
    place(store, "u1")
    dispatchers(store, config(rx.url(), secrets=[], allow_unsigned=True))
    wait_until(lambda: all_delivered(store, 1), 15, "the delivery")
    (hit,) = rx.snapshot()
    assert "webhook-signature" not in hit.headers and hit.headers["webhook-id"] == hit.event["id"]
    assert "sent WITHOUT webhook-signature" in "".join(capfd.readouterr())


@dataclass
class TrickleReceiver:
    """A raw TCP receiver that answers ``HTTP/1.1 200 OK`` and then one header byte every ``every`` s.

    ``held`` lists, per connection, how long it was held from the first
    answer byte until the client closed it.
    """

    every: float
    lasts: float
    held: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._closed = threading.Event()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: Any) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            started = time.monotonic()
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while time.monotonic() - started < self.lasts and not self._closed.is_set():
                    time.sleep(self.every)
                    conn.sendall(b"a")
            except OSError:  # the client hung up: that is what is measured
                self.held.append(time.monotonic() - started)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()


# ------------------------------------------------------------------ helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("{}\n")
    return {"DATABASE_URL": db_url, "SCHEDULER_CONFIG": str(config_file)}


def _cli() -> Any:
    from scheduler.cli import cli

    return cli


# ------------------------------------------------------------------ yielding to placements


def test_the_pacer_spends_a_share_of_a_core_only_while_the_worker_is_busy() -> None:
    from scheduler.webhooks.pacing import BUSY_WINDOW, Pacer

    now = [100.0]
    committed = [0]
    pacer = Pacer(lambda: committed[0], share=0.05, max_yield=10.0, clock=lambda: now[0])
    assert pacer.hold_back() == 0.0 and pacer.limited, "a worker that just started counts as busy"
    assert pacer.claims() == int(0.05 / 0.002), "claims are sized to the allowance at the assumed cost"
    pacer.spent(0.2)  # four seconds' worth of budget
    committed[0] += 10
    now[0] += 0.1
    wait = pacer.hold_back()
    assert 0 < wait <= BUSY_WINDOW and pacer.claims() == 0
    # The budget refills with time while the worker keeps committing.
    for _ in range(5):
        committed[0] += 10
        now[0] += 0.9
        pacer.hold_back()
    assert pacer.hold_back() == 0.0 and pacer.claims() > 0
    # The worker goes quiet: no limit at all.
    pacer.spent(5.0)
    now[0] += BUSY_WINDOW + 0.1
    assert pacer.hold_back() == 0.0 and not pacer.limited and pacer.claims() >= 1 << 30
    # A burst longer than max_yield: limited at first, then shares the machine again.
    committed[0] += 1
    now[0] += 0.1
    pacer.hold_back()
    pacer.spent(1.0)
    committed[0] += 1
    now[0] += 0.1
    assert pacer.hold_back() > 0
    for _ in range(12):
        committed[0] += 1
        now[0] += 0.9
        pacer.spent(1.0)
        pacer.hold_back()
    assert not pacer.limited and pacer.hold_back() == 0.0


def test_the_pacer_ignores_an_activity_figure_that_fails() -> None:
    from scheduler.webhooks.pacing import Pacer

    def broken() -> int:
        raise RuntimeError("no figure")

    now = [0.0]
    pacer = Pacer(broken, share=0.05, max_yield=10.0, clock=lambda: now[0])
    now[0] += 5
    assert pacer.hold_back() == 0.0 and not pacer.limited


def test_deliveries_yield_while_placements_flow_and_all_go_out_after(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    rx = receivers()
    events = place(store, *(f"p{i}" for i in range(60)))
    committed = [0]
    flowing = threading.Event()
    flowing.set()

    def placements() -> None:  # the worker's committed counter, moving while the burst lasts
        while flowing.is_set():
            committed[0] += 1
            time.sleep(0.01)

    mover = threading.Thread(target=placements, daemon=True)
    mover.start()
    try:
        d = dispatchers(store, config(rx.url()), activity=lambda: committed[0], busy_share=0.001)
        wait_until(lambda: d.stats().yielded >= 2, 15, "the dispatcher to yield")
        assert d.stats().delivered < len(events), "a budget of 1 ms a second cannot pay for every delivery"
    finally:
        flowing.clear()
        mover.join()
    wait_until(lambda: all_delivered(store, len(events)), 20, "every delivery once placements stopped")
    assert sorted(h.delivery for h in rx.snapshot()) == sorted(events)


class HeaderReceiver:
    """A receiver answering each request with a status and one extra header, sent as raw latin-1 bytes."""

    def __init__(self, answers: Callable[[int], tuple[int, str, str]]) -> None:
        self.hits = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    receiver.hits += 1
                    nth = receiver.hits
                status, name, value = answers(nth)
                self.send_response(status)
                self.send_header(name, value)  # http.server encodes header values as latin-1
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b3", "1e3"])
def test_a_retry_after_that_is_not_a_number_of_seconds_is_ignored(
    store: Store, dispatchers: Callable[..., WebhookDispatcher], value: str
) -> None:
    """Found from outside: a 200 carrying ``Retry-After: ²`` (byte 0xB2) was recorded dead as
    "refused: invalid URL: could not convert string to float", and so was a 503 with it (no retry):
    ``str.isdigit`` is true for superscripts, which ``float`` refuses. A receiver's header must not
    turn a delivery into a dead one; a value that is not whole seconds or an HTTP date is ignored.
    """
    ok = HeaderReceiver(lambda nth: (200, "Retry-After", value))
    flaky = HeaderReceiver(lambda nth: (503 if nth == 1 else 200, "Retry-After", value))
    try:
        (event,) = place(store, "t")
        dispatchers(store, config(ok.url(), flaky.url()))
        wait_until(lambda: all_delivered(store, 2), 15, "both deliveries")
        assert by_event(store, ok.url())[event].attempts == 1
        assert by_event(store, flaky.url())[event].attempts == 2
    finally:
        ok.close()
        flaky.close()


def _resolver_of(client: Any) -> Any:
    """The resolver pool behind a delivery client (its network backend's), as the dispatcher made it."""
    return client._transport._pool._network_backend._resolver


def test_callback_names_that_never_resolve_do_not_hold_up_the_configured_urls(
    store: Store, receivers: Callable[..., Receiver], dispatchers: Callable[..., WebhookDispatcher]
) -> None:
    """Every resolver thread of the callbacks busy, as with callback hosts whose name server never
    answers (names a submitter picks under an allowed wildcard): the operator's own URL, a name that
    needs resolving too, is still delivered. The two kinds shared one pool of four threads, and a
    lookup abandoned at its attempt's deadline still ran later, so such callbacks starved every
    delivery that needed a lookup.
    """
    rx = receivers()
    port = rx.server.server_port
    dispatcher = dispatchers(store, config(f"http://localhost:{port}/hook"))
    gate = threading.Event()
    callbacks = _resolver_of(dispatcher._clients[True])
    for _ in range(8):  # more than its threads: some wait in its queue as well
        callbacks.submit(gate.wait, 60)
    try:
        (event,) = place(store, "a")
        wait_until(lambda: all_delivered(store, 1), 15, "the configured URL's delivery")
        assert [h.delivery for h in rx.ok_hits()] == [event]
    finally:
        gate.set()


def test_an_abandoned_lookup_is_not_run_later() -> None:
    """Lookups queued behind busy resolver threads and abandoned at their attempt's deadline never run:
    they were left in the queue, each to take a resolver thread later for an answer nobody wanted."""
    from concurrent.futures import ThreadPoolExecutor

    import httpcore

    from scheduler.webhooks.transport import DeliveryBackend, deadline

    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    pool.submit(gate.wait, 60)  # the only thread is busy
    backend = DeliveryBackend(guarded=False, internal_ok=frozenset(), resolver=pool)
    try:
        for _ in range(5):
            with deadline(0.05), pytest.raises(httpcore.ConnectTimeout):
                backend.connect_tcp("localhost", 9)
        queued = []
        while not pool._work_queue.empty():  # the pool's one thread is still busy: only we take items
            queued.append(pool._work_queue.get_nowait().future)
        assert queued and all(future.cancelled() for future in queued), "abandoned lookups would still run"
    finally:
        gate.set()
        pool.shutdown(wait=True)
