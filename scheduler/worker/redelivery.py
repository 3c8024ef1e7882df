"""How many times a message has been delivered, to dead-letter one that keeps coming back.

A message that makes the worker crash, or that is requeued again and again,
would otherwise cycle forever. Quorum queues count deliveries themselves
(``x-delivery-count``, kept by the broker across consumers and restarts);
classic queues only flag a redelivery, so this process counts the
redeliveries it sees of each body (by digest). That count lives in this
process only: on classic queues it catches a message requeued over and
over while this replica leads, not one that crashes replica after replica
(use a quorum queue for that). Why a digest and not a message id: a raw
hostile message may carry no id, or a reused one.

A message the worker hands back itself because the database failed (the
group of a commit refused for want of a database, the messages buffered
behind it) is *forgiven* that redelivery: the outage is not the message's
fault. Counting it made a database that refused writes for a minute or two
(a failover's read-only primary, a full disk, a revoked grant) dead-letter
every request waiting at the head of the queue as "delivered 21 times",
never to be placed once the database was back.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from scheduler.message_headers import HEADER_DELIVERY_COUNT
from scheduler.worker.batch import Incoming


class RedeliveryCounter:
    """Deliveries of each message so far (1 on a first delivery)."""

    def __init__(self, *, broker_counts: bool, capacity: int = 100_000) -> None:
        """``broker_counts``: the queue is a quorum queue, so ``x-delivery-count`` is the broker's own."""
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._forgiven: OrderedDict[bytes, int] = OrderedDict()
        """Redeliveries not to count, by digest (subtracted from the broker's count on quorum queues)."""
        self._capacity = capacity
        self._broker_counts = broker_counts

    def deliveries(self, body: bytes, headers: dict[str, Any], redelivered: bool) -> int:
        count = headers.get(HEADER_DELIVERY_COUNT) if self._broker_counts else None
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            # The broker's count of earlier deliveries, less those the worker caused itself.
            forgiven = self._forgiven.get(_digest(body), 0) if self._forgiven else 0
            return max(1, count + 1 - forgiven)
        if not redelivered:
            return 1
        key = _digest(body)
        seen = self._seen.pop(key, 1) + 1
        self._remember(self._seen, key, seen)
        return seen

    def forgive(self, messages: list[Incoming]) -> None:
        """Do not count the next redelivery of ``messages``: the worker hands them back itself, for a
        reason that is not theirs (the database failed)."""
        for msg in messages:
            key = _digest(msg.body)
            if self._broker_counts:
                self._remember(self._forgiven, key, self._forgiven.pop(key, 0) + 1)
            else:
                self._remember(self._seen, key, self._seen.pop(key, 1) - 1)

    def _remember(self, table: OrderedDict[bytes, int], key: bytes, value: int) -> None:
        table[key] = value
        if len(table) > self._capacity:
            table.popitem(last=False)

    def split_worn_out(
        self, batch: list[Incoming], limit: int
    ) -> tuple[list[Incoming], list[tuple[Incoming, str]]]:
        """Messages delivered more than ``limit`` (``worker.max_redeliveries``) times, apart from the rest."""
        keep: list[Incoming] = []
        worn: list[tuple[Incoming, str]] = []
        for msg in batch:
            n = self.deliveries(msg.body, msg.headers, msg.redelivered)
            if n > limit:
                worn.append((msg, f"delivered {n} times (worker.max_redeliveries is {limit})"))
            else:
                keep.append(msg)
        return keep, worn


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


__all__ = ["RedeliveryCounter"]
