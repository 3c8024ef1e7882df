"""An in-process message source: the worker's flow without a broker, for tests and tools.

Why: plan-then-commit-then-settle is tested once, through the real
:class:`~scheduler.worker.flow.Flow`, instead of being re-implemented next
to each test that needs data written as the worker writes it. Messages go in
as bytes and headers (:meth:`MemorySource.deliver`); what the flow did with
each comes out as records: acked, requeued, dead-lettered (with reason and
kind), sent to the retry queue. No AMQP, no network.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.worker.batch import Incoming, RetryLater


@dataclass(frozen=True)
class DeadLettered:
    """A message the flow sent to ``<queue>.dead``."""

    message: Incoming
    reason: str
    kind: str


@dataclass
class MemorySource:
    """Deliveries numbered from 1, and the record of how each was settled (like one AMQP channel)."""

    delivered: list[Incoming] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    """Delivery tags acknowledged, in order (an ack of several is listed tag by tag)."""
    requeued: list[int] = field(default_factory=list)
    """Delivery tags handed back to the queue, in order."""
    dead_letters: list[DeadLettered] = field(default_factory=list)
    retries: list[RetryLater] = field(default_factory=list)
    history: list[tuple[str, int]] = field(default_factory=list)
    """Everything in the order it happened: ``("ack" | "requeue" | "dead" | "retry", delivery tag)``."""
    _unsettled: dict[int, Incoming] = field(default_factory=dict)

    def deliver(
        self,
        body: bytes,
        headers: dict[str, Any] | None = None,
        *,
        redelivered: bool = False,
        at: float = 0.0,
        message_id: str | None = None,
    ) -> Incoming:
        """A new delivery of ``body`` (its tag is the next number), received at time ``at``."""
        msg = Incoming(len(self.delivered) + 1, body, dict(headers or {}), redelivered, at, message_id)
        self.delivered.append(msg)
        self._unsettled[msg.delivery_tag] = msg
        return msg

    @property
    def unsettled(self) -> list[int]:
        """Tags neither acked nor requeued yet."""
        return sorted(self._unsettled)

    def _settle(self, tag: int, multiple: bool, what: str, into: list[int]) -> None:
        tags = [t for t in sorted(self._unsettled) if t <= tag] if multiple else [tag]
        for t in tags:
            if self._unsettled.pop(t, None) is None:
                raise ValueError(f"delivery tag {t} is not unsettled (a channel error in AMQP)")
            into.append(t)
            self.history.append((what, t))

    def ack(self, tag: int, *, multiple: bool = False) -> None:
        self._settle(tag, multiple, "ack", self.acked)

    def nack_requeue(self, tag: int) -> None:
        self._settle(tag, False, "requeue", self.requeued)

    def requeue(self, batch: Sequence[Incoming]) -> None:
        if batch:
            self._settle(max(m.delivery_tag for m in batch), True, "requeue", self.requeued)

    def dead_letter(self, msg: Incoming, reason: str, *, kind: str) -> None:
        self.dead_letters.append(DeadLettered(msg, reason, kind))
        self.history.append(("dead", msg.delivery_tag))

    def retry(self, retry: RetryLater) -> None:
        self.retries.append(retry)
        self.history.append(("retry", retry.message.delivery_tag))

    def service(self) -> None:
        """Nothing to keep alive in process."""


__all__ = ["DeadLettered", "MemorySource"]
