"""One value read from outside (database, broker), refreshed in the background when stale.

Why a module: the metrics collector and the dashboard summary both answer
from figures that cost a query or a broker round trip, and neither may make
its caller wait for one (stale-while-revalidate, see :class:`Cached`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog

from scheduler.safetext import first_line

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass
class Cached(Generic[T]):
    """One value read from outside (database, broker), refreshed in the background when stale.

    :meth:`get` never waits for the source: it returns the value it has and,
    when that is older than ``max_age``, starts one background thread to read
    a fresh one (stale-while-revalidate). :meth:`prefetch` starts the first
    read early (at start-up), so the first scrape already finds figures.
    Reads are attempted at most once per ``max_age``, successful or not. A
    failed read keeps the last good value and is reported through :attr:`ok`,
    so a database hiccup shows up as ``scheduler_metrics_source_up 0``, never
    as a slow or failed scrape.
    """

    name: str
    fetch: Callable[[], T]
    max_age: float
    clock: Callable[[], float] = time.monotonic
    value: T | None = None
    fetched_at: float | None = None
    ok: bool = False
    error: str | None = None
    _tried_at: float | None = None
    _refreshing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, *, block_if_empty: bool = False) -> T | None:
        """The cached value; starts a background refresh when due.

        ``block_if_empty``: read synchronously when there is no value yet (for
        callers that must answer with data or an error, like the dashboard API).
        """
        if block_if_empty and self.value is None:
            return self.refresh_now()
        with self._lock:
            now = self.clock()
            due = self._tried_at is None or now - self._tried_at >= self.max_age
            if not due or self._refreshing:
                return self.value
            self._tried_at, self._refreshing = now, True
        threading.Thread(target=self._refresh, name=f"cached-{self.name}", daemon=True).start()
        return self.value

    def prefetch(self) -> None:
        """Start the first read in the background (no-op once anything was tried)."""
        if self._tried_at is None:
            self.get()

    def refresh_now(self) -> T | None:
        """Read synchronously, now (tests, and callers that need the current figure)."""
        with self._lock:
            self._tried_at, self._refreshing = self.clock(), True
        self._refresh()
        return self.value

    def age(self) -> float | None:
        """Seconds since the last successful read (None if there was none)."""
        return None if self.fetched_at is None else self.clock() - self.fetched_at

    def _refresh(self) -> None:
        try:
            value = self.fetch()
        except Exception as exc:
            with self._lock:
                self.ok, self.error, self._refreshing = False, first_line(exc), False
            log.warning(
                "source unavailable; keeping the last figures", source=self.name, error=first_line(exc)
            )
            return
        with self._lock:
            self.value, self.fetched_at, self.ok, self.error = value, self.clock(), True, None
            self._refreshing = False


__all__ = ["Cached"]
