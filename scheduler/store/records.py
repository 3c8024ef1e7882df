"""Plain values that go in and out of the store: commit items, results and task records.

Why frozen dataclasses and not ORM objects: the worker builds hundreds of
these per commit and the store turns them into executemany parameter lists;
plain slotted dataclasses cost a fraction of an ORM identity map, and being
immutable they can be handed between the consumer thread and the committer
without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scheduler.fleet import Allocation
from scheduler.models import Reason, SchedulingRequest, TaskStatus

# ------------------------------------------------------------------ commit items


@dataclass(frozen=True, slots=True)
class Placement:
    """A request placed on ``node``: task -> ``scheduled``, one allocation, one ``task.scheduled`` event."""

    request: SchedulingRequest
    node: str
    node_ip: str
    strategy: str
    message: str
    attempts: int

    @property
    def task_id(self) -> str:
        return self.request.task_id


@dataclass(frozen=True, slots=True)
class Failure:
    """A request that will never be placed: task -> ``failed``, one ``task.failed`` event.

    ``request_json`` is the request as received (it may not validate: that is
    often why it failed), or None when only the task id could be read.
    """

    task_id: str
    request_json: str | None
    reason: Reason
    message: str
    strategy: str | None
    attempts: int
    callback_url: str | None


@dataclass(frozen=True, slots=True)
class Waiting:
    """A request that fits nowhere yet and will be retried: task -> ``waiting``, no event."""

    request: SchedulingRequest
    message: str
    attempts: int
    strategy: str

    @property
    def task_id(self) -> str:
        return self.request.task_id


@dataclass(frozen=True, slots=True)
class Release:
    """The VM is gone: a ``scheduled`` task -> ``released``, its allocation ends, one event."""

    task_id: str


@dataclass(frozen=True, slots=True)
class Move:
    """A placed VM moved to ``target``: its allocation ends on ``source`` and starts, the same, on
    ``target``; the task stays ``scheduled``, one ``task.moved`` event.

    Applied only when the task is ``scheduled`` on ``source`` in the database; otherwise it is
    ignored (reported in ``CommitResult.ignored``) and changes nothing.
    """

    task_id: str
    source: str
    target: str
    target_ip: str
    message: str


CommitItem = Placement | Failure | Waiting | Release | Move


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What one :meth:`Store.commit` did.

    ``applied``: task ids whose row changed, in batch order (a task appears
    once even if several items touched it). ``duplicates``: placements,
    failures or waits for tasks that were already terminal, so nothing
    changed (redeliveries). ``ignored``: releases of tasks that were not
    ``scheduled`` and moves of tasks not ``scheduled`` on their source. ``released``: the
    allocations that ended (not those of moves), so the caller
    can give the capacity back in its in-memory fleet. ``event_ids``: the
    outbox events written. ``cancelled``: releases that ended a task before
    it was placed (queued, waiting or not arrived yet: ``released`` with
    reason ``cancelled``). ``conflicts``: requests refused because their task
    id already holds a different request (the original is untouched; the
    newcomer gets a ``task.failed`` event with reason ``conflict``).
    """

    applied: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    released: tuple[Allocation, ...] = ()
    event_ids: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()
    """Moves applied (their allocations now on the target)."""

    def merged(self, other: CommitResult) -> CommitResult:
        """This result followed by ``other`` (a batch committed in several parts)."""
        return CommitResult(*(getattr(self, name) + getattr(other, name) for name in self.__slots__))


# --------------------------------------------------------------------- queries


@dataclass(frozen=True, slots=True)
class ImportCounts:
    """The outcome of a node import; ``revision`` is the inventory revision after it."""

    created: int
    updated: int
    unchanged: int
    revision: int

    @property
    def total(self) -> int:
        return self.created + self.updated + self.unchanged


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """What the active allocations on one node add up to."""

    cpu: int = 0
    memory: int = 0
    disk: int = 0
    vms: int = 0
    devices: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, int]:
        """``{cpu, memory, disk, vms}`` plus one key per device kind in use (``gpu``...)."""
        return {"cpu": self.cpu, "memory": self.memory, "disk": self.disk, "vms": self.vms, **self.devices}


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task row as the CLI and the HTTP API show it.

    ``request`` is the stored request; None when the task failed before a
    request object could be read (only its id was).
    """

    task_id: str
    status: TaskStatus
    node: str | None
    node_ip: str | None
    reason: Reason | None
    message: str | None
    attempts: int
    strategy: str | None
    request: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The ``scheduler tasks --json`` line of docs/contracts.md."""
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "node": self.node,
            "reason": self.reason.value if self.reason else None,
            "message": self.message,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }

    def to_detail_json(self) -> dict[str, Any]:
        """:meth:`to_json` plus the node's IP, the strategy and the request (``scheduler status --json``)."""
        out = self.to_json()
        out["node_ip"] = self.node_ip
        out["strategy"] = self.strategy
        out["request"] = self.request
        return out
