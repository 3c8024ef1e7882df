"""The worker daemon: its parts, wired. Leadership -> consume -> plan -> commit -> ack.

Each part has one job and its own module:

* :mod:`~scheduler.worker.session`: the broker connection, reconnecting for
  ever, following leadership (take it up, drop it) and telling the flow when
  to act;
* :mod:`~scheduler.worker.leadership_term`: taking up a term (claim the
  fence, load the fleet), with explicit outcomes;
* :mod:`~scheduler.worker.flow`: the requests of a term, buffered, planned
  (:mod:`~scheduler.worker.batch`, pure), committed
  (:mod:`~scheduler.worker.pipeline` on the :mod:`~scheduler.worker.committer`
  thread) and settled (acks, retries, dead letters) through a message source
  (:mod:`~scheduler.worker.amqp_source` here,
  :mod:`~scheduler.worker.memory_source` in tests);
* :mod:`~scheduler.worker.consumer`: the consuming channel, whose closing
  hands every unacked message back to the queue;
* :mod:`~scheduler.worker.config_watcher`: the strategy from the mounted
  config file, without a restart;
* :mod:`~scheduler.worker.state`: what the HTTP thread and the metrics may
  read.

This module builds them from the settings and runs the sessions; on
SIGTERM/SIGINT the sessions finish the batch in flight, the lease is
released and :meth:`Worker.run` returns 0.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog

from scheduler.config import Settings
from scheduler.elector import LeaderElector
from scheduler.store import Store
from scheduler.strategies import Placer
from scheduler.worker.config_watcher import ConfigWatcher
from scheduler.worker.flow import Flow
from scheduler.worker.hooks import WorkerHooks
from scheduler.worker.leadership_term import LeadershipTerms
from scheduler.worker.session import Sessions, StartupFailed
from scheduler.worker.state import WorkerState

log = structlog.get_logger(__name__)

LOOP_STALL_FLOOR = 10.0
"""Seconds: the least a stalled loop is given before the replica stands aside (see ``loop_stalled``)."""


class Worker:
    """The daemon; construct with its collaborators, then :meth:`run`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        leadership: LeaderElector,
        *,
        placer: Placer | None = None,
        hooks: WorkerHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.leadership = leadership
        self.clock = clock
        self.hooks = hooks
        w = settings.strategy_weights
        self.placer = placer or Placer(
            settings.strategy,
            weights=(w.cpu, w.memory, w.disk),
            seed=settings.random_seed,
            dedicated_exclusive=settings.dedicated_nodes_exclusive,
            spread_max_skew=settings.spread_max_skew,
        )
        self.state = WorkerState(
            strategy=self.placer.default,
            max_group_retries=settings.worker.max_group_retries,
            commit_stuck_after=settings.worker.commit_stuck_after,
        )
        self.stopping = threading.Event()
        jitter = random.Random()
        terms = LeadershipTerms(store, settings, jitter)
        self.flow = Flow(settings, store, self.placer, self.state, terms, hooks=hooks, clock=clock)
        self.sessions = Sessions(
            settings,
            leadership,
            self.flow,
            terms,
            ConfigWatcher(self.placer, self.state, settings),
            self.state,
            self.stopping,
            hooks=hooks,
            clock=clock,
            jitter=jitter,
        )

    def loop_stalled(self) -> str | None:
        """The elector's liveness check: why this replica must not hold the lease (None: its loop runs).

        A loop that has not gone round for ``election.lease_duration`` (at
        least :data:`LOOP_STALL_FLOOR`: loading a large fleet at the start of
        a term takes seconds) is stuck; see :meth:`WorkerState.loop_stall`.
        """
        after = max(self.settings.election.lease_duration, LOOP_STALL_FLOOR)
        return self.state.loop_stall(self.clock(), after)

    def install_signal_handlers(self) -> None:
        def _graceful(signum: int, _frame: FrameType | None) -> None:
            # Nothing here may take a lock: the handler runs on the main thread between two
            # bytecodes, possibly while that thread holds the log writer's lock (a deadlock).
            self.sessions.stop_signal = signal.Signals(signum).name
            self.stopping.set()

        signal.signal(signal.SIGTERM, _graceful)
        signal.signal(signal.SIGINT, _graceful)

    def run(self) -> int:
        """Serve until stopped; returns the process exit code.

        Raises :class:`StartupFailed` when the broker never answered within
        ``worker.startup_timeout``; after a first good connection, every
        outage is waited out, however long.
        """
        if self.settings.heartbeat_lowered():
            log.warning(
                "amqp.heartbeat lowered to a third of the lease so a frozen leader cannot hold the queue",
                configured=self.settings.amqp.heartbeat,
                used=self.settings.broker_heartbeat(),
                lease_duration=self.settings.election.lease_duration,
            )
        # Campaign only once connected to the broker: a replica that cannot consume must
        # not hold the lease (the sessions switch eligibility with the connection).
        self.leadership.set_eligible(False, "not connected to the broker yet")
        self.leadership.watch_liveness(self.loop_stalled)
        self.leadership.start()
        try:
            self.sessions.run()
        finally:
            log.info("stopping", signal=self.sessions.stop_signal)
            self.flow.close()
            self.leadership.stop()
            log.info("worker stopped", committed=self.state.committed)
        return 0


__all__ = ["StartupFailed", "Worker", "WorkerHooks", "WorkerState"]
