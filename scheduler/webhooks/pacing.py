"""Pacing: how much the webhook dispatcher may do while the worker is placing VMs.

Placements come first (docs/webhooks.md, "Placements first"): while the
worker's committed count moves, the dispatcher's threads, bookkeeping and
senders together, spend at most a share of one core, and claim only what
that budget pays for. On a machine whose cores the broker, the database and
the worker already fill, another process would take the same CPU; only not
spending it during the burst helps. A burst longer than ``max_yield``
seconds shares the machine again, so deliveries are never starved for long.
Nothing waits in memory meanwhile: the events stay in the outbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BUSY_SHARE = 0.05
"""While placements flow: the share of one core the dispatcher's threads may spend (see the docstring)."""
MAX_YIELD = 10.0
"""Seconds of continuous placement activity after which the dispatcher stops yielding."""
BUSY_WINDOW = 1.0
"""The worker counts as busy while its activity counter moved within this many seconds."""


class Pacer:
    """How much the dispatcher may do while the worker places: a CPU-time budget, refilled with time.

    ``activity()`` is a counter that moves whenever the worker commits a
    group; while it moved within :data:`BUSY_WINDOW`, the dispatcher's
    threads may spend ``share`` of one core: the allowance grows by
    ``share`` CPU-seconds per second (up to one window's worth), every
    thread's CPU time (``time.thread_time``) is taken from it, and a cycle
    waits while it is negative. Claims are sized to what the allowance
    pays for, at the measured CPU cost of one delivery. Idle worker, or
    ``max_yield`` seconds of continuous activity: no limit. A worker that
    has just started counts as busy (it may take up a backlog at once).
    """

    def __init__(
        self,
        activity: Callable[[], int],
        share: float,
        max_yield: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._activity = activity
        self._share = max(share, 0.001)
        self._max_yield = max_yield
        self._lock = threading.Lock()
        self._unpaid = 0.0  # CPU seconds spent since the last look, by every thread
        self._seen: int | None = None
        self._at = clock()
        self._active_at = self._at
        self._busy_since: float | None = None
        self._allowance = self._share * BUSY_WINDOW
        self._cost = 0.002  # moving average of the CPU seconds of one attempt, bookkeeping included
        self._attempt_cpu = 0.0
        self._attempts = 0
        self.limited = False

    def spent(self, seconds: float, attempts: int = 0) -> None:
        """Account CPU time spent by one of the dispatcher's threads (and attempts made with it)."""
        with self._lock:
            self._unpaid += seconds
            self._attempt_cpu += seconds
            self._attempts += attempts

    def _update(self) -> None:
        now = self._clock()
        count: int | None
        try:
            count = self._activity()
        except Exception:  # a figure that cannot be read never stops deliveries
            count = self._seen
        if count != self._seen:
            if self._seen is not None:
                self._active_at = now
            self._seen = count
        with self._lock:
            unpaid, self._unpaid = self._unpaid, 0.0
            if self._attempts >= 8:
                self._cost = 0.7 * self._cost + 0.3 * self._attempt_cpu / self._attempts
                self._attempt_cpu, self._attempts = 0.0, 0
        busy = now - self._active_at < BUSY_WINDOW
        if busy and self._busy_since is None:
            self._busy_since = now
        elif not busy:
            self._busy_since = None
        cap = self._share * BUSY_WINDOW
        self._allowance = min(self._allowance + (now - self._at) * self._share, cap) - unpaid
        self._at = now
        self.limited = busy and self._busy_since is not None and now - self._busy_since < self._max_yield
        if not self.limited:
            self._allowance = cap

    def hold_back(self) -> float:
        """Seconds to wait before the next cycle: 0 unless the worker is busy and the budget is spent."""
        self._update()
        if not self.limited or self._allowance >= 0:
            return 0.0
        return min(-self._allowance / self._share, BUSY_WINDOW)

    def claims(self) -> int:
        """How many deliveries the budget pays for now (no limit when not yielding)."""
        if not self.limited:
            return 1 << 30
        return max(0, int(self._allowance / self._cost))


__all__ = ["BUSY_SHARE", "BUSY_WINDOW", "MAX_YIELD", "Pacer"]
