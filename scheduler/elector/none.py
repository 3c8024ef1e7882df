"""Backend ``none``: a single replica that always leads, with no shared lease.

Why a fixed epoch (1) rather than a counter: with one replica there is nobody
to fence off, and a constant needs no shared state, so this backend works
before the database is even reachable. Do not run two replicas with this
backend: nothing stops both from committing. A database whose fence already
holds a higher epoch (it was used with the ``database`` or ``kubernetes``
backend) needs that fence reset, or pass ``epoch=`` explicitly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from scheduler.elector.record import NewLeader, StartedLeading, StoppedLeading

FIXED_EPOCH = 1

log = structlog.get_logger(__name__)


class AlwaysLeader:
    """Same interface as :class:`~scheduler.elector.elector.Elector`; leads from start() to stop()."""

    backend = "none"

    def __init__(
        self,
        identity: str,
        *,
        epoch: int = FIXED_EPOCH,
        on_started_leading: StartedLeading | None = None,
        on_stopped_leading: StoppedLeading | None = None,
        on_new_leader: NewLeader | None = None,
    ) -> None:
        self._identity = identity
        self._epoch = epoch
        self._on_started_leading = on_started_leading
        self._on_stopped_leading = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._state = threading.Lock()
        self._leading = threading.Event()
        self._started = False
        self._stopped = False

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def epoch(self) -> int | None:
        return self._epoch if self._started else None

    @property
    def leader(self) -> str | None:
        return self._identity if self._leading.is_set() else None

    def describe(self) -> str:
        return "no election (backend none)"

    def start(self) -> None:
        with self._state:
            if self._started:
                raise RuntimeError("elector already started")
            self._started = True
        self._leading.set()
        log.info("leadership acquired", identity=self._identity, epoch=self._epoch, lock=self.describe())
        if self._on_new_leader is not None:
            self._on_new_leader(self._identity)
        if self._on_started_leading is not None:
            self._on_started_leading(self._epoch)

    def stop(self, *, release: bool | None = None, timeout: float | None = None) -> None:
        with self._state:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        self._leading.clear()
        log.info("leadership given up", identity=self._identity, epoch=self._epoch)
        if self._on_stopped_leading is not None:
            self._on_stopped_leading()

    def is_leader(self) -> bool:
        return self._leading.is_set()

    def set_eligible(self, eligible: bool, why: str = "") -> None:
        """Nothing to do: with one replica there is nobody to hand the lead to."""

    def watch_liveness(self, check: Callable[[], str | None]) -> None:
        """Nothing to do, as for :meth:`set_eligible`."""

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)
