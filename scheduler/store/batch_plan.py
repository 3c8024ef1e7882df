"""Planning one commit batch (pure): from decisions and current task states to rows to write.

Kept apart from the SQL so the rules read in one place and in batch order:

* a Placement, Failure or Waiting for a task that is already terminal
  (``scheduled``, ``failed``, ``released``) is a duplicate: nothing changes,
  which is what makes redelivered messages harmless (docs/contracts.md invariant 2);
* a Release of a ``scheduled`` task ends its allocation; a Release of a
  task not placed yet (``queued``, ``waiting``, or not arrived: no row) is a
  cancel: the task ends ``released`` with reason ``cancelled``, and any
  request for it that arrives later is a duplicate, never placed; a Release
  of a ``failed`` or ``released`` task is ignored;
* a request (Placement, Waiting, Failure) for a task whose stored request
  differs is a conflict: the row stays as it is and the newcomer gets a
  ``task.failed`` event with reason ``conflict`` (to its own callback); the
  same request again is a duplicate as above;
* everything stored is strict JSON and printable text (see
  :mod:`scheduler.safetext`), so one hostile message cannot make a batch
  unstorable on either database;
* items apply in order, so a batch holding a placement and then the release
  of the same task ends ``released`` with two events, and a release followed
  by a placement of the same task leaves the placement a duplicate;
* every change to a terminal status yields exactly one outbox event whose
  payload is the webhook body of docs/contracts.md, serialised once, here.

The functions are pure: the caller reads the states under the fence lock,
and writes the plan in the same transaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring as _enc
from typing import Any

from scheduler import safetext
from scheduler.fleet import Allocation
from scheduler.models import MAX_PRIORITY, Reason, SchedulingRequest, TaskStatus
from scheduler.store.records import CommitItem, CommitResult, Failure, Move, Placement, Release, Waiting

TERMINAL = frozenset({TaskStatus.SCHEDULED, TaskStatus.FAILED, TaskStatus.RELEASED})

TASK_COLUMNS = (
    "task_id", "request", "status", "node", "reason", "message", "attempts", "strategy", "priority", "epoch",
    "created_at", "updated_at",
)  # fmt: skip
TASK_UPDATE_COLUMNS = tuple(c for c in TASK_COLUMNS if c not in ("task_id", "created_at"))
ALLOCATION_COLUMNS = (
    "task_id", "node", "cpu", "memory", "disk", "anti_affinity_group", "epoch", "created_at", "released_at",
    "resources", "spread_group", "anti_affinity_mode",
)  # fmt: skip
OUTBOX_COLUMNS = ("event_id", "type", "task_id", "payload", "callback_url", "dispatched", "created_at")

STRATEGY_MAX = 64  # tasks.strategy is VARCHAR(64)

MOVED = "task.moved"
"""The event of a move: the task stays ``scheduled``, on its new node."""

EVENT_TYPES = {
    TaskStatus.SCHEDULED: "task.scheduled",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.RELEASED: "task.released",
}


MESSAGE_MAX = 4000
"""Longest human message stored (the column is TEXT; this only keeps rows and webhooks small)."""


def compact_json(obj: Any) -> str:
    """Compact strict JSON (no NaN, no lone surrogates) of an already-clean value."""
    return safetext.dumps(safetext.clean(obj))


@dataclass(slots=True)
class TaskState:
    """A task's row as the batch evolves it, item by item.

    ``request_text`` is the stored JSON; ``created`` is None for a row not in
    the database yet (the writer then stamps it with the batch time).
    """

    status: TaskStatus | None
    request_text: str
    node: str | None = None
    node_ip: str | None = None
    reason: str | None = None
    message: str | None = None
    attempts: int = 0
    strategy: str | None = None
    priority: int = 0
    created: Any = None
    callback_url: str | None = None
    callback_known: bool = False
    dirty: bool = False

    def callback(self) -> str | None:
        """The request's ``callback_url``, parsed from the stored JSON only when first needed."""
        if not self.callback_known:
            try:
                parsed = safetext.loads(self.request_text)
            except (ValueError, RecursionError):
                parsed = None
            value = parsed.get("callback_url") if isinstance(parsed, dict) else None
            self.callback_url = value if isinstance(value, str) else None
            self.callback_known = True
        return self.callback_url


@dataclass(slots=True)
class BatchPlan:
    """Rows to write for one batch (tuples in the ``*_COLUMNS`` orders) and the result to report."""

    task_rows: list[tuple[Any, ...]] = field(default_factory=list)
    """Rows of tasks that were in the database when the batch started (to upsert)."""
    new_task_rows: list[tuple[Any, ...]] = field(default_factory=list)
    """Rows of tasks the database did not have (to insert; see ``BulkWriter.insert_new``)."""
    allocation_rows: list[tuple[Any, ...]] = field(default_factory=list)
    release_in_db: list[str] = field(default_factory=list)
    outbox_rows: list[tuple[Any, ...]] = field(default_factory=list)
    result: CommitResult = field(default_factory=CommitResult)


def releasable(items: Sequence[CommitItem], states: dict[str, TaskState]) -> list[str]:
    """Ids of releases and moves whose task is ``scheduled`` in the database (their allocations must
    be read)."""
    out = []
    for item in items:
        if isinstance(item, Release | Move):
            state = states.get(item.task_id)
            if state is not None and state.status is TaskStatus.SCHEDULED:
                out.append(item.task_id)
    return out


def plan_batch(
    items: Sequence[CommitItem],
    states: dict[str, TaskState],
    active: dict[str, Allocation],
    *,
    epoch: int,
    now: datetime,
    stamp: Any,
) -> BatchPlan:
    """Apply ``items`` in order to ``states`` (mutated) and return the rows to write.

    ``active`` holds the database's active allocations of the tasks being
    released; ``stamp`` is ``now`` as the bulk writer wants timestamps.
    """
    applied: dict[str, None] = {}
    duplicates: list[str] = []
    ignored: list[str] = []
    released: list[Allocation] = []
    new_allocs: dict[str, list[Any]] = {}
    release_in_db: list[str] = []
    outbox_rows: list[tuple[Any, ...]] = []
    event_ids: list[str] = []
    cancelled: list[str] = []
    conflicts: list[str] = []
    created_at = now.isoformat().replace("+00:00", "Z")
    next_event_id = iter(new_event_ids(len(items))).__next__  # an item makes one event at most

    moved: list[str] = []
    for item in items:
        tid = item.task_id
        state = states.get(tid)
        if isinstance(item, Move):
            held = active.get(tid)
            if (
                state is None
                or state.status is not TaskStatus.SCHEDULED
                or held is None
                or (held.node != item.source or tid in new_allocs)
            ):
                ignored.append(tid)  # not scheduled on the source (any more): nothing changes
                continue
            release_in_db.append(tid)
            del active[tid]
            new_allocs[tid] = [
                tid, item.target, held.cpu, held.memory, held.disk, held.group, epoch, stamp, None,
                compact_json(dict(held.resources)) if held.resources else None, held.spread_group,
                "soft" if held.soft else None,
            ]  # fmt: skip
            state.node, state.node_ip, state.message = item.target, item.target_ip, item.message
            state.dirty = True
            applied[tid] = None
            moved.append(tid)
            event_id = next_event_id()
            payload = _payload(event_id, MOVED, created_at, tid, state)
            outbox_rows.append((event_id, MOVED, tid, payload, state.callback(), False, stamp))
            event_ids.append(event_id)
            continue
        if isinstance(item, Release):
            if state is None or state.status in (TaskStatus.QUEUED, TaskStatus.WAITING):
                # A cancel: the task ends here and no request for it is ever placed.
                before = "not arrived" if state is None else (state.status or TaskStatus.QUEUED).value
                if state is None:
                    state = states[tid] = TaskState(status=None, request_text="null")
                state.status = TaskStatus.RELEASED
                state.node = state.node_ip = None
                state.reason = Reason.CANCELLED.value
                state.message = f"cancelled before it was placed (was {before})"
                cancelled.append(tid)
                callback = state.callback()
            elif state.status is not TaskStatus.SCHEDULED:
                ignored.append(tid)
                continue
            else:
                pending = new_allocs.get(tid)
                if pending is not None and pending[8] is None:  # placed earlier in this batch
                    pending[8] = stamp
                    released.append(allocation_from_row(pending))
                elif tid in active:
                    release_in_db.append(tid)
                    released.append(active.pop(tid))
                state.status = TaskStatus.RELEASED
                state.reason = None
                state.message = "released"
                callback = state.callback()
        elif state is not None and state.status is TaskStatus.RELEASED and state.reason == Reason.CANCELLED:
            duplicates.append(tid)  # cancelled before it arrived: never placed, whatever the body
            continue
        elif state is not None and (conflict := _conflicting(state, item)) is not None:
            conflicts.append(tid)
            event_id = next_event_id()
            payload = _payload(event_id, EVENT_TYPES[TaskStatus.FAILED], created_at, tid, conflict)
            outbox_rows.append(
                (event_id, EVENT_TYPES[TaskStatus.FAILED], tid, payload, conflict.callback(), False, stamp)
            )
            event_ids.append(event_id)
            continue
        elif state is not None and state.status in TERMINAL:
            duplicates.append(tid)
            continue
        elif isinstance(item, Placement):
            req = item.request
            state = _with_request(states, tid, state, req.model_dump_json(), req.priority)
            state.callback_url, state.callback_known = req.callback_url, True
            state.status = TaskStatus.SCHEDULED
            state.node = item.node
            state.node_ip = item.node_ip
            state.reason = None
            state.message = safetext.printable(item.message, MESSAGE_MAX)
            state.attempts = item.attempts
            state.strategy = item.strategy
            new_allocs[tid] = [
                tid, item.node, req.requested_cpu, req.requested_memory, req.requested_disk,
                req.anti_affinity_group, epoch, stamp, None, *resource_columns(req),
            ]  # fmt: skip
            callback = req.callback_url
        elif isinstance(item, Waiting):
            req = item.request
            state = _with_request(states, tid, state, req.model_dump_json(), req.priority)
            state.callback_url, state.callback_known = req.callback_url, True
            state.status = TaskStatus.WAITING
            state.node = state.node_ip = state.reason = None
            state.message = safetext.printable(item.message, MESSAGE_MAX)
            state.attempts = item.attempts
            state.strategy = item.strategy
            callback = None
        else:
            state = _with_failure(states, tid, state, item)
            state.status = TaskStatus.FAILED
            state.node = state.node_ip = None
            state.reason = item.reason.value
            state.message = safetext.printable(item.message, MESSAGE_MAX)
            state.attempts = item.attempts
            # Whatever arrived, it must fit the column, or the whole batch would fail.
            state.strategy = safetext.printable(item.strategy)[:STRATEGY_MAX] if item.strategy else None
            callback = item.callback_url
        state.dirty = True
        applied[tid] = None
        if state.status in TERMINAL:
            event_id = next_event_id()
            event_type = EVENT_TYPES[state.status]
            payload = _payload(event_id, event_type, created_at, tid, state)
            outbox_rows.append((event_id, event_type, tid, payload, callback, False, stamp))
            event_ids.append(event_id)

    task_rows: list[tuple[Any, ...]] = []
    new_task_rows: list[tuple[Any, ...]] = []
    for tid, s in states.items():
        if s.dirty:
            status = s.status.value if s.status else TaskStatus.QUEUED.value
            created = stamp if s.created is None else s.created
            row = (tid, s.request_text, status, s.node, s.reason, s.message, s.attempts, s.strategy,
                   s.priority, epoch, created, stamp)  # fmt: skip
            (new_task_rows if s.created is None else task_rows).append(row)
    return BatchPlan(
        task_rows=task_rows,
        new_task_rows=new_task_rows,
        allocation_rows=[tuple(a) for a in new_allocs.values()],
        release_in_db=release_in_db,
        outbox_rows=outbox_rows,
        result=CommitResult(
            applied=tuple(applied),
            duplicates=tuple(duplicates),
            ignored=tuple(ignored),
            released=tuple(released),
            event_ids=tuple(event_ids),
            cancelled=tuple(cancelled),
            conflicts=tuple(conflicts),
            moved=tuple(moved),
        ),
    )


def resource_columns(req: SchedulingRequest) -> tuple[str | None, str | None, str | None]:
    """The resource-model columns of an allocation row: devices as JSON (None for none), the spread
    group, and ``"soft"`` for a soft anti-affinity group (None: hard)."""
    devices = compact_json(req.requested_resources) if req.requested_resources else None
    soft = "soft" if req.anti_affinity_group is not None and req.anti_affinity_mode == "soft" else None
    return devices, req.spread_group, soft


def allocation_from_row(row: Sequence[Any]) -> Allocation:
    """An :class:`Allocation` from a row in ``ALLOCATION_COLUMNS`` order."""
    return make_allocation(*row[:6], *row[9:12])


def make_allocation(
    task_id: str,
    node: str,
    cpu: int,
    memory: int,
    disk: int,
    group: str | None,
    resources: str | None,
    spread_group: str | None,
    mode: str | None,
) -> Allocation:
    """An :class:`Allocation` from its stored columns (``resources`` as JSON text)."""
    devices = tuple(sorted(json.loads(resources).items())) if resources else ()
    return Allocation(task_id, node, cpu, memory, disk, group, devices, spread_group, mode == "soft")


def _request_text(item: CommitItem) -> str | None:
    """The request an item carries, as it would be stored; None when it carries none."""
    if isinstance(item, Placement | Waiting):
        return item.request.model_dump_json()
    if isinstance(item, Failure) and item.request_json is not None:
        text = safetext.strict_json_text(item.request_json)
        return text if text is not None else compact_json(item.request_json)
    return None


def _same_request(stored: str, incoming: str) -> bool:
    if stored == incoming:
        return True
    try:
        return bool(safetext.loads(stored) == safetext.loads(incoming))
    except (ValueError, RecursionError):
        return False


def _conflicting(state: TaskState, item: CommitItem) -> TaskState | None:
    """The newcomer's failed state when ``item`` carries a request unlike the stored one, else None.

    A row that holds no request (``null``: a failure with an unreadable body)
    conflicts with nothing.
    """
    incoming = _request_text(item)
    if incoming is None or state.request_text in ("null", "") or _same_request(state.request_text, incoming):
        return None
    attempts = getattr(item, "attempts", 1)
    was = state.status.value if state.status else "new in this batch"
    return TaskState(
        status=TaskStatus.FAILED,
        request_text=incoming,
        reason=Reason.CONFLICT.value,
        message=f"task id already exists with a different request (status {was}); the original is unchanged",
        attempts=int(attempts),
    )


def _payload(event_id: str, event_type: str, created_at: str, tid: str, state: TaskState) -> str:
    """The webhook body of docs/contracts.md as compact JSON, assembled from pre-encoded parts.

    Equal to ``compact_json({"id", "type", "created_at", "task": {"task_id",
    "status", "node", "reason", "message", "attempts", "request"}})`` (a test
    holds it to that), but about five times cheaper: every string goes
    through the C string encoder and the stored request text is spliced in
    as it is rather than parsed and re-serialised. This runs once per event
    on the commit hot path.
    """
    node = "null" if state.node is None else f'{{"name":{_enc(state.node)},"ip":{_enc(state.node_ip or "")}}}'
    reason = "null" if state.reason is None else _enc(state.reason)
    message = "null" if state.message is None else _enc(safetext.scrub(state.message))
    status = state.status.value if state.status else "null"
    return (
        f'{{"id":"{event_id}","type":"{event_type}","created_at":"{created_at}","task":{{'
        f'"task_id":{_enc(tid)},"status":"{status}","node":{node},"reason":{reason},'
        f'"message":{message},"attempts":{int(state.attempts)},"request":{state.request_text}}}}}'
    )


def new_event_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as 32 hex digits, like ``uuid.uuid4().hex``, from one read.

    One ``os.urandom`` for a whole batch, not one per event: each read is a
    system call that lets go of the GIL, and in the committer thread
    getting it back meant waiting for the planning thread (about 6 us an
    event in a burst, in py-spy's samples).
    """
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    text = raw.hex()
    return [text[i : i + 32] for i in range(0, 32 * count, 32)]


def _with_request(
    states: dict[str, TaskState], tid: str, state: TaskState | None, text: str, priority: int
) -> TaskState:
    if state is None:
        state = states[tid] = TaskState(status=None, request_text=text)
    else:
        state.request_text = text
    state.priority = priority
    return state


def _with_failure(
    states: dict[str, TaskState], tid: str, state: TaskState | None, item: Failure
) -> TaskState:
    """The state of a failing task; the request as received is kept when it is a JSON object.

    A request that is not a JSON object is stored as a JSON string (what
    arrived, for the operator to see); no request at all keeps what the row
    already had, or ``null``.
    """
    text: str | None = None
    priority: int | None = None
    callback: str | None = None
    if item.request_json is not None:
        try:
            parsed = safetext.loads(item.request_json)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            text = compact_json(parsed)
            prio = parsed.get("priority")
            valid = isinstance(prio, int) and not isinstance(prio, bool) and abs(prio) <= MAX_PRIORITY
            priority = prio if valid else None
            cb = parsed.get("callback_url")
            callback = cb if isinstance(cb, str) and cb.isascii() and cb.isprintable() else None
        else:
            # Not an object (or not JSON): kept as one JSON string, scrubbed, bounded.
            text = compact_json(safetext.scrub(item.request_json[:MESSAGE_MAX]))
    if state is None:
        state = states[tid] = TaskState(status=None, request_text=text or "null")
    elif text is not None:
        state.request_text = text
    if text is not None:
        state.callback_url, state.callback_known = callback, True
    if priority is not None:
        state.priority = priority
    return state
