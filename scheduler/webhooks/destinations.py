"""Destinations of webhook deliveries: their pace, how much of each is claimed, and whose turn it is.

A destination is one ``scheme://host:port``. At most ``per_destination``
attempts run at once to one destination, a freed sender goes to the
destinations in turn, and claims are sized per destination (about
``QUEUE_SECONDS`` of work at its own pace): so one slow or hanging receiver
holds at most that many senders, its backlog stays in the database (the
claim query skips a saturated destination), and the others keep flowing.
The dispatcher thread plans and claims with these figures; the sender
threads take their turns and report back, under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Collection, Iterable

import httpx

from scheduler.store.deliveries import Due

QUEUE_SECONDS = 0.5  # claim about this much work ahead of the senders
MAX_QUEUE = 512


class Destinations:
    """Per destination: the moving average of one attempt, the claims in flight and the senders' turns.

    ``concurrency`` senders in all, at most ``per_destination`` of them on
    one destination. Waiting claims are kept per destination in insertion
    order, which is also the order of the turns.
    """

    def __init__(self, concurrency: int, per_destination: int) -> None:
        self.concurrency = concurrency
        self.per_destination = per_destination
        self._origins: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._waiting: dict[str, deque[Due]] = {}  # claimed, not started, by destination (insertion = turn)
        self._running: dict[str, int] = {}
        self._running_total = 0
        self._unfinished = 0
        self._origin_seconds: dict[str, float] = {}  # moving average of one attempt, per destination
        self._started_at: dict[int, tuple[str, float]] = {}  # running attempts: destination, start
        self._oldest_running: dict[str, float] = {}  # per destination, the start of its oldest one
        self._attempt_seconds = 0.05  # moving average of one attempt, to size the queue

    # ------------------------------------------------------------------ pace and claims
    def origin(self, url: str) -> tuple[str, str]:
        """(the destination ``scheme://host:port``, the URL's own ``scheme://netloc`` text).

        The first is what the limit counts (case, default port and trailing
        dot do not make a different destination); the second is the prefix
        the claim query can skip without parsing URLs in SQL.
        """
        found = self._origins.get(url)
        if found is not None:
            return found
        try:
            parsed = httpx.URL(url)
            host = parsed.raw_host.decode("ascii").lower().rstrip(".")
            port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, 0)
            key = f"{parsed.scheme}://{host}:{port}"
        except Exception:
            key = url
        prefix = url.split("://", 1)
        text = f"{prefix[0]}://{prefix[1].split('/', 1)[0]}" if len(prefix) == 2 else url
        if len(self._origins) > 10_000:
            self._origins.clear()
        self._origins[url] = found = (key, text)
        return found

    def observe(self, url: str, seconds: float) -> None:
        """Fold a sent attempt's duration into the moving averages that size the claims."""
        self._attempt_seconds = 0.8 * self._attempt_seconds + 0.2 * seconds
        origin = self.origin(url)[0]
        if len(self._origin_seconds) > 10_000:
            self._origin_seconds.clear()
        before = self._origin_seconds.get(origin, seconds)
        self._origin_seconds[origin] = 0.8 * before + 0.2 * seconds

    def capacity(self) -> int:
        """How many claimed deliveries to hold (running plus queued for the senders).

        Enough to keep every sender busy for about ``QUEUE_SECONDS`` at the
        current pace, so outcomes are written and new work claimed in batches
        of hundreds to a fast receiver, yet only two rounds' worth to a slow
        one (a claim must not wait in the queue longer than its lease).
        """
        senders = self.concurrency
        pace = senders / max(self._attempt_seconds, 0.001)
        return senders + max(senders, min(int(pace * QUEUE_SECONDS), MAX_QUEUE))

    def claim_cap(self, origin: str) -> int:
        """How many deliveries to one destination may be claimed at once (running or waiting).

        About ``QUEUE_SECONDS`` of work at that destination's own pace, and
        never fewer than its running limit: hundreds to a fast receiver (SQL
        in batches), ``per_destination`` to a slow or hanging one, so its
        backlog neither fills the claim slots nor waits past its lease. The
        pace is the slower of its moving average and its oldest running
        attempt, so a receiver that starts hanging counts as slow within a
        second, not only when its first attempts time out, and the claims it
        no longer deserves are handed back (:meth:`trim`) for the others.
        """
        seconds = self._origin_seconds.get(origin, self._attempt_seconds)
        started = self._oldest_running.get(origin)
        if started is not None:
            seconds = max(seconds, time.monotonic() - started)
        ahead = int(self.per_destination * QUEUE_SECONDS / max(seconds, 0.001))
        return max(self.per_destination, min(ahead, self.capacity()))

    def load(self, in_flight: Iterable[Due]) -> dict[str, int]:
        """Attempts in flight (claimed, queued or running) per destination."""
        load: dict[str, int] = {}
        for due in in_flight:
            key = self.origin(due.url)[0]
            load[key] = load.get(key, 0) + 1
        return load

    def saturated(self, in_flight: Collection[Due]) -> list[str]:
        """The ``scheme://netloc`` spellings of destinations at their limit: the claim query skips them."""
        load = self.load(in_flight)
        full = {key for key, n in load.items() if n >= self.claim_cap(key)}
        origins = [self.origin(d.url) for d in in_flight]
        return sorted({text for key, text in origins if key in full})

    # ------------------------------------------------------------------ turns
    def queue(self, due: Due, origin: str) -> None:
        """Put a claimed delivery behind the others waiting for ``origin``."""
        with self._lock:
            self._waiting.setdefault(origin, deque()).append(due)
            self._unfinished += 1

    def turns(self) -> list[tuple[Due, str]]:
        """The waiting attempts to start now (with their destination), counted as running from now on.

        Round-robin over destinations below ``per_destination``, within
        ``concurrency`` in all. Why not hand everything to the executor's queue: it is first in,
        first out, so a hanging receiver's backlog would take every sender
        in turn. Here no destination runs more than its limit at once, and
        a sender freed by one destination goes to the next one in turn.
        """
        start: list[tuple[Due, str]] = []
        with self._lock:
            progress = True
            while progress and self._running_total < self.concurrency and self._waiting:
                progress = False
                for origin in list(self._waiting):
                    if self._running_total >= self.concurrency:
                        break
                    if self._running.get(origin, 0) >= self.per_destination:
                        continue
                    waiting = self._waiting.pop(origin)
                    start.append((waiting.popleft(), origin))
                    if waiting:
                        self._waiting[origin] = waiting  # to the back: the next destination goes first
                    self._running[origin] = self._running.get(origin, 0) + 1
                    self._running_total += 1
                    progress = True
        return start

    def started(self, due: Due, origin: str) -> None:
        """A sender took ``due``: its start counts towards the destination's pace while it runs."""
        with self._lock:
            self._started_at[due.id] = (origin, time.monotonic())
            self._oldest_running.setdefault(origin, self._started_at[due.id][1])

    def finished(self, due: Due, origin: str) -> int:
        """``due`` is done (or was never started): free its slot; how many claims are still unfinished."""
        with self._lock:
            if self._started_at.pop(due.id, None) is not None:
                starts = [t for o, t in self._started_at.values() if o == origin]
                if starts:
                    self._oldest_running[origin] = min(starts)
                else:
                    self._oldest_running.pop(origin, None)
            left = self._running.get(origin, 1) - 1
            if left > 0:
                self._running[origin] = left
            else:
                self._running.pop(origin, None)
            self._running_total -= 1
            self._unfinished -= 1
            return self._unfinished

    def trim(self) -> list[Due]:
        """Take back claims waiting (not running) beyond their destination's current cap.

        The dispatcher hands them back: they become due again at once in the
        database, where the claim query skips a saturated destination, so the
        slots go to other destinations.
        """
        dropped: list[Due] = []
        with self._lock:
            for origin, waiting in self._waiting.items():
                excess = len(waiting) + self._running.get(origin, 0) - self.claim_cap(origin)
                while excess > 0 and waiting:
                    dropped.append(waiting.pop())
                    excess -= 1
            for origin in [o for o, w in self._waiting.items() if not w]:
                del self._waiting[origin]
            self._unfinished -= len(dropped)
        return dropped


__all__ = ["MAX_QUEUE", "QUEUE_SECONDS", "Destinations"]
