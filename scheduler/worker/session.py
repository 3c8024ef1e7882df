"""The worker's broker sessions: connect, follow leadership, run the flow, reconnect for ever.

Why a module: this loop owns the one broker connection (pika is not
thread-safe) and decides *when* things happen (take up or drop leadership,
flush a batch, check the config file and the inventory), while
:class:`~scheduler.worker.flow.Flow` decides *what* happens to the messages.
The elector runs in its own thread and is only asked whether we lead.

1. Connect (reconnecting with capped, jittered backoff that resets after a
   healthy session; only at start-up is the wait bounded, by
   ``worker.startup_timeout``, ending in :class:`StartupFailed`), declare the
   topology, and stay connected as a standby while another replica leads.
2. On gaining leadership: begin a term (claim the fence, load the fleet:
   :mod:`~scheduler.worker.leadership_term`), open the consuming channel and
   start the flow on it.
3. On losing leadership, or a :class:`~scheduler.worker.flow.StopLeading`
   from the flow (fenced out, database down): end the flow, close the
   consuming channel at once so every unacked message goes back to the
   queue, and become a standby again.
4. On a stop request: cancel the consumers, finish and commit the batch in
   flight, ack, close.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from scheduler.broker import Topology, connect, negotiated_frame_max, tolerate_hostile_headers
from scheduler.config import Settings
from scheduler.elector import LeaderElector
from scheduler.models import MAX_BODY_BYTES
from scheduler.safetext import printable
from scheduler.worker.amqp_source import AmqpSource
from scheduler.worker.batch import Incoming, receive_body
from scheduler.worker.config_watcher import ConfigWatcher
from scheduler.worker.consumer import AMQP_ERRORS, Consumer
from scheduler.worker.flow import Flow, StopLeading
from scheduler.worker.hooks import WorkerHooks, call_hook
from scheduler.worker.leadership_term import LeadershipTerms, NotLeading
from scheduler.worker.outbound import Outbound
from scheduler.worker.state import WorkerState

log = structlog.get_logger(__name__)


class StartupFailed(Exception):
    """The broker was not reached within ``worker.startup_timeout``; the message says why, in one line."""


class Sessions:
    """Broker sessions one after the other until stopped; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        leadership: LeaderElector,
        flow: Flow,
        terms: LeadershipTerms,
        config_watcher: ConfigWatcher,
        state: WorkerState,
        stopping: threading.Event,
        *,
        hooks: WorkerHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: random.Random,
    ) -> None:
        self.settings = settings
        self.leadership = leadership
        self.flow = flow
        self.terms = terms
        self.config_watcher = config_watcher
        self.state = state
        self.stopping = stopping
        self.hooks = hooks
        self.clock = clock
        self.jitter = jitter
        self.topology = Topology.from_config(settings.amqp)
        tolerate_hostile_headers()  # before any delivery is read: see its docstring
        self._keep_body = max(MAX_BODY_BYTES + 1, settings.amqp.dead_letter_max_body)
        """How much of a delivered body is kept (:func:`~scheduler.worker.batch.receive_body`)."""
        self.consumer = Consumer(self.topology, settings.amqp.prefetch)
        self.stop_signal: str | None = None
        """The signal that asked us to stop, for the log (set by the signal handler)."""
        self._resume_at = 0.0
        self._aside_until: float | None = None
        self._connected_at: float | None = None
        self._ever_connected = False
        self._epoch = 0
        self._next_inventory_check = 0.0
        self._next_config_check = 0.0

    def run(self) -> None:
        """Serve until stopped, reconnecting after every broker outage.

        Raises :class:`StartupFailed` when the broker never answered within
        ``worker.startup_timeout``; after a first good connection, every
        outage is waited out, however long.
        """
        cfg = self.settings.worker
        backoff = cfg.reconnect_initial_backoff
        began = self.clock()
        while not self.stopping.is_set():
            try:
                self._session()
                backoff = cfg.reconnect_initial_backoff
            except AMQP_ERRORS as exc:
                # A leader cut off from the broker cannot consume; holding on to the
                # lease would keep a healthy standby waiting for the whole outage.
                self.leadership.set_eligible(False, "broker connection lost")
                self._drop_leadership("broker connection lost")
                self.state.broker_connected = False
                self.state.not_consuming_why = "broker connection lost"
                connected_at, self._connected_at = self._connected_at, None
                if connected_at is not None and self.clock() - connected_at >= cfg.healthy_session:
                    backoff = cfg.reconnect_initial_backoff  # a healthy session: start small again
                error = printable(str(exc) or type(exc).__name__, 300)
                if not self._ever_connected and self.clock() - began >= cfg.startup_timeout:
                    raise StartupFailed(
                        f"broker unreachable for {cfg.startup_timeout:g}s at start-up: {error}"
                    ) from None
                delay = backoff * self.jitter.uniform(0.5, 1.0)
                log.warning("broker connection lost; reconnecting", error=error, retry_in=round(delay, 2))
                self.stopping.wait(delay)
                backoff = min(backoff * 2, cfg.reconnect_max_backoff)

    def _session(self) -> None:
        """One broker connection's lifetime."""
        conn = connect(
            str(self.settings.amqp.url),
            heartbeat=self.settings.broker_heartbeat(),
            name=f"virtflow-scheduler worker {self.settings.identity}",
        )
        try:
            control = conn.channel()
            self.topology.declare(control)
            publisher = conn.channel()
            publisher.confirm_delivery()
            self.state.broker_connected = True
            self.leadership.set_eligible(True)
            self._connected_at = self.clock()
            self._ever_connected = True
            log.info("broker connected", exchange=self.topology.exchange, queue=self.topology.queue)
            while not self.stopping.is_set():
                self._tick(conn, publisher)
            log.info("stop requested; finishing the group in flight", signal=self.stop_signal)
            # Graceful stop: commit what we hold, then let go of the queue.
            if self.consumer.channel is not None:
                self.consumer.cancel()
                conn.process_data_events(time_limit=0)
                stop = self.flow.flush()
                if stop is None:
                    stop = self.flow.drain()
                if stop is not None:
                    self._stop_leading(stop)
                self._close_consume_channel()
        finally:
            self.state.broker_connected = False
            if conn.is_open:
                with contextlib.suppress(*AMQP_ERRORS):
                    conn.close()

    def _tick(self, conn: pika.BlockingConnection, publisher: BlockingChannel) -> None:
        self.state.loop_ran_at = began = self.clock()
        if self._aside_until is not None and began >= self._aside_until:
            self._aside_until = None
            self.leadership.set_eligible(True)
        leader = self.leadership.is_leader()
        self.state.lease_held = leader
        if leader and self.consumer.channel is None:
            if self.clock() >= self._resume_at:
                self._become_leader(conn, publisher)
        elif not leader and (self.consumer.channel is not None or self.flow.leading):
            self._drop_leadership("lost the lease")
        elif leader and (self.leadership.epoch or 0) != self._epoch:
            self._drop_leadership("lease changed hands and came back")
        now = self.clock()
        if now >= self._next_config_check:
            # Standbys follow the config too, so a new leader starts with the new strategy.
            self._next_config_check = now + self.settings.worker.config_watch_interval
            self.config_watcher.check()
        if self.consumer.channel is None:
            conn.process_data_events(time_limit=min(0.2, self.settings.election.retry_period / 2))
            return
        conn.process_data_events(time_limit=self.flow.wait_budget())
        stop = self.flow.reap()
        if stop is None and self.flow.due():
            stop = self.flow.flush()
        if stop is None and now >= self._next_inventory_check:
            self._next_inventory_check = now + self.settings.worker.inventory_poll_interval
            stop = self.flow.refresh_inventory()
        if stop is not None:
            self._stop_leading(stop)

    # ----------------------------------------------------------- leadership
    def _become_leader(self, conn: pika.BlockingConnection, publisher: BlockingChannel) -> None:
        term = self.terms.begin(self.leadership.epoch or 0)
        if isinstance(term, NotLeading):
            self.state.not_consuming_why = term.why
            self._resume_at = self.clock() + term.retry_in
            if term.database_down:
                self._stand_aside(term.why)
            return
        fleet, epoch = term.fleet, term.epoch
        self._epoch = epoch
        channel = self.consumer.open(conn, self._on_request, self._on_heartbeat)
        outbound = Outbound(
            publisher, self.topology, self.settings.amqp.dead_letter_max_body, negotiated_frame_max(conn)
        )
        self.flow.begin(term, AmqpSource(conn, self.consumer, channel, outbound))
        self.state.leader, self.state.epoch, self.state.fleet = True, epoch, fleet
        self.state.consuming, self.state.not_consuming_why = True, ""
        self._hook("consumer_active", True)
        log.info(
            "leading: consuming",
            epoch=epoch,
            nodes=fleet.size,
            allocations=len(fleet.allocations),
            strategy=self.flow.placer.default,
        )
        if self.hooks:
            self.hooks.leadership_changed(True, epoch)

    def _stop_leading(self, stop: StopLeading) -> None:
        """End the term the flow gave up (after a database outage, not before it may answer)."""
        if stop.database_down:
            self._resume_at = self.clock() + self.terms.db_delay()
            self._stand_aside(stop.why)
        self._drop_leadership(stop.why)

    def _stand_aside(self, why: str) -> None:
        """Hand the lease over until ``_resume_at``: this replica's database does not answer.

        With the ``kubernetes`` backend the lease does not need the database, so
        a leader cut off from it kept renewing the lease while it waited, and a
        standby that reaches the database never got to lead: the queue stalled
        for the whole outage. After the wait it campaigns again; if the
        database is down for every replica the lease just passes around.
        """
        self._aside_until = self._resume_at
        self.leadership.set_eligible(False, why)

    def _drop_leadership(self, why: str) -> None:
        if self.consumer.channel is None and not self.flow.leading:
            return
        # Let commits in flight finish (or be refused by the fence) before the
        # channel closes; their messages are not acked and go back to the queue.
        self.flow.end()
        self._close_consume_channel()
        self.state.leader, self.state.fleet = False, None
        self.state.consuming, self.state.not_consuming_why = False, why
        self._hook("consumer_active", False)
        log.warning("stopped leading", reason=why, epoch=self._epoch)
        if self.hooks:
            self.hooks.leadership_changed(False, self._epoch)

    def _close_consume_channel(self) -> None:
        """Closing the channel hands every unacked message back to the queue at once."""
        self.flow.discard_buffer()
        self.consumer.close()

    # ------------------------------------------------------------ consuming
    def _on_request(self, ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        headers = props.headers if isinstance(props.headers, dict) else {}
        message_id = props.message_id if isinstance(props.message_id, str) else None
        kept, size = receive_body(body, self._keep_body)
        self.flow.receive(
            Incoming(
                method.delivery_tag, kept, dict(headers), method.redelivered, self.clock(), message_id, size
            )
        )

    def _on_heartbeat(
        self, ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        self.flow.heartbeat(body)

    def _hook(self, name: str, *args: Any) -> None:
        call_hook(self.hooks, name, *args)


__all__ = ["Sessions", "StartupFailed"]
