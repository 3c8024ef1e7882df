"""Turning a batch of delivered messages into decisions, with an undo for the fleet.

This is the worker's core step, kept free of I/O so it can be tested without
a broker or a database: decode and validate every message, apply releases,
place requests (higher ``priority`` first), and produce (a) the items for one
store transaction, (b) the messages to dead-letter and to send back through
the retry queue, and (c) an undo that puts the in-memory fleet back exactly
as it was if the transaction fails. Nothing here acknowledges anything; the
daemon acks only after the commit (docs/contracts.md invariant 3).
"""

from __future__ import annotations

import collections
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scheduler import safetext
from scheduler.fleet import Allocation, FleetView
from scheduler.message_headers import HEADER_ATTEMPT, HEADER_PUBLISHED_AT, HEADER_SCHEMA
from scheduler.models import (
    MAX_BODY_BYTES,
    SCHEMA_VERSION,
    BadMessage,
    Decision,
    MoveRequest,
    Reason,
    ReleaseRequest,
    SchedulingRequest,
    parse_message,
    valid_task_id,
)
from scheduler.moves import MoveOutcome, check_move, undo_move
from scheduler.store import CommitItem, Failure, Move, Placement, Release, Waiting
from scheduler.strategies import Placer

RETRYABLE = frozenset({Reason.INSUFFICIENT_RESOURCES, Reason.NO_ONLINE_NODES})
MAX_STORED_BODY = 4096
MISSING_TASK_ID = (
    "invalid_request: task_id missing, and no valid message_id to take it from "
    "(a producer gives every request its id, so that a redelivery is never placed twice)"
)


@dataclass(frozen=True)
class Incoming:
    """One delivered message, as the daemon's consumer callback captured it."""

    delivery_tag: int
    body: bytes
    headers: dict[str, Any]
    redelivered: bool = False
    received: float = 0.0
    message_id: str | None = None
    """The AMQP ``message_id`` property (the producer sets it to the task id)."""
    original_size: int | None = None
    """The body's size when it was cut at receipt (``body`` is then its start); None: ``body`` is whole."""

    @property
    def size(self) -> int:
        """The size of the body as it was delivered."""
        return len(self.body) if self.original_size is None else self.original_size


def receive_body(body: bytes, keep: int) -> tuple[bytes, int | None]:
    """What to keep of a delivered body: all of it, or its first ``keep`` bytes and its size.

    Why: a body beyond :data:`~scheduler.models.MAX_BODY_BYTES` can only be
    dead-lettered, and only its start is kept there; holding it whole while its
    batch is planned, committed and settled held up to ``amqp.prefetch`` of them
    at once (RabbitMQ takes bodies of 128 MiB): fifty bodies of 8 MiB took a
    worker past its 512 MiB memory limit, and the next replica after it.
    """
    if len(body) <= keep:
        return body, None
    return body[:keep], len(body)


@dataclass(frozen=True)
class RetryLater:
    """A request to send back through ``<queue>.retry`` after the commit."""

    message: Incoming
    request: SchedulingRequest
    attempt: int
    delay_ms: int


@dataclass(frozen=True)
class DeadLetter:
    message: Incoming
    reason: str


@dataclass
class BatchPlan:
    """Everything one batch of messages turns into."""

    items: list[CommitItem] = field(default_factory=list)
    retries: list[RetryLater] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    deferred: list[Incoming] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    decision_seconds: list[float] = field(default_factory=list)
    published_at: dict[str, int] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    placed: dict[str, SchedulingRequest] = field(default_factory=dict)
    sources: list[Incoming] = field(default_factory=list)
    """The message each item came from (``sources[i]`` for ``items[i]``), to dead-letter a poisoned one."""
    moved: dict[str, tuple[MoveOutcome, Allocation]] = field(default_factory=dict)
    """Moves applied to the fleet: the outcome and the allocation the task held before."""
    refused: list[DeadLetter] = field(default_factory=list)
    """Move messages refused (with the reason): dead-lettered, nothing changes."""
    moves_done_before: list[str] = field(default_factory=list)
    """Tasks of redelivered moves found on their target already (applied before the redelivery): acked."""
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def add(self, item: CommitItem, source: Incoming) -> None:
        self.items.append(item)
        self.sources.append(source)

    @functools.cached_property
    def tally(self) -> collections.Counter[tuple[str, str]]:
        """Decisions by (strategy, outcome), outcome ``placed`` or the reason; counted once per batch.

        Why here: the metrics hook and the batch's summary log line both need
        it, and a pass over every decision each cost them a share of the
        batch's time the goal for logs and metrics did not leave.
        """
        return collections.Counter(
            (d.strategy, "placed" if d.reason is None else d.reason.value) for d in self.decisions
        )

    def undo(self, fleet: FleetView) -> None:
        """Put the fleet back as it was before :func:`decide_batch` (most recent change first)."""
        for step in reversed(self._undo):
            step()
        self._undo.clear()

    def unmove(self, fleet: FleetView, task_ids: list[str]) -> None:
        """Take back moves the store did not apply (the task was not scheduled on the source)."""
        for task_id in task_ids:
            entry = self.moved.pop(task_id, None)
            if entry is not None:
                undo_move(fleet, *entry)

    def forget(self, fleet: FleetView, task_ids: list[str]) -> None:
        """Drop reservations the store refused as duplicates (the task already had an outcome)."""
        for task_id in task_ids:
            if task_id in self.placed:
                fleet.release(task_id)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 60.0

    def delay_ms(self, attempt: int, rng: random.Random) -> int:
        """Exponential backoff with +-10% jitter, so a wave of waiting requests spreads out."""
        base = min(self.initial_backoff * 2 ** max(attempt - 1, 0), self.max_backoff)
        return max(1, int(base * 1000 * rng.uniform(0.9, 1.1)))


def newer_schema(headers: dict[str, Any]) -> str | None:
    """Why a message written to a newer schema than this worker reads is kept aside, or None.

    Why dead-letter it rather than judge its body: during a rolling upgrade a
    new producer may publish fields an old worker does not know; judged by the
    old schema the request would fail for good (``invalid_request``), while in
    ``<queue>.dead`` it waits, intact, to be moved back once every worker reads
    it. A missing or unreadable header counts as the current version (raw
    producers often send none); an older version is read as the current one,
    which every change so far has kept compatible.
    """
    version = headers.get(HEADER_SCHEMA)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        return (
            f"unsupported_schema_version: the message is written to schema version {version}, "
            f"this worker reads version {SCHEMA_VERSION}"
        )
    return None


def attempt_of(headers: dict[str, Any]) -> int:
    value = headers.get(HEADER_ATTEMPT, 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def decide_batch(
    messages: list[Incoming],
    fleet: FleetView,
    placer: Placer,
    *,
    now: float,
    retry: RetryPolicy,
    callback_refusal: Callable[[str], str | None],
    rng: random.Random,
    to_move: dict[str, SchedulingRequest | str] | None = None,
) -> BatchPlan:
    """Decide a whole batch in memory; see the module docstring for what comes out.

    ``callback_refusal`` judges a request's ``callback_url`` (why it is refused,
    or None): the URL policy parses with the HTTP client's own parser, so it is
    passed in (:func:`scheduler.webhooks.policy.callback_checker`) and the
    planning imports no HTTP library.

    ``to_move`` holds, for each task a move message of the batch names, its
    stored request (the caller reads them from the database), or why it
    cannot move (``task t is not scheduled (released)``).
    """
    plan = BatchPlan()
    releases: list[tuple[ReleaseRequest, Incoming, int]] = []
    requests: list[tuple[SchedulingRequest, Incoming]] = []
    first_request: dict[str, int] = {}
    """Where in the batch the first request of each task arrived."""
    moves: list[tuple[MoveRequest, Incoming]] = []
    for at, msg in enumerate(messages):
        if msg.original_size is not None:
            too_large = f"body of {msg.size} bytes exceeds {MAX_BODY_BYTES}"
            plan.dead.append(DeadLetter(msg, f"{Reason.INVALID_REQUEST}: {too_large}"))
            continue
        newer = newer_schema(msg.headers)
        if newer is not None:
            plan.dead.append(DeadLetter(msg, newer))
            continue
        try:
            parsed = parse_message(msg.body)
        except BadMessage as bad:
            if bad.task_id is None:
                plan.dead.append(DeadLetter(msg, f"{bad.reason}: {bad.message}"))
            else:
                plan.add(
                    Failure(
                        task_id=bad.task_id,
                        request_json=_stored_body(msg.body),
                        reason=bad.reason,
                        message=bad.message,
                        strategy=None,
                        attempts=attempt_of(msg.headers),
                        callback_url=None,
                    ),
                    msg,
                )
            continue
        if isinstance(parsed, SchedulingRequest) and "task_id" not in parsed.model_fields_set:
            named = _task_id_of(msg)
            if named is None:
                plan.dead.append(DeadLetter(msg, MISSING_TASK_ID))
                continue
            parsed = parsed.model_copy(update={"task_id": named})
        if isinstance(parsed, ReleaseRequest):
            releases.append((parsed, msg, at))
        elif isinstance(parsed, MoveRequest):
            moves.append((parsed, msg))
        else:
            requests.append((parsed, msg))
            first_request.setdefault(parsed.task_id, at)

    requested_here = set(first_request)
    released_first: set[str] = set()
    """Tasks released in this batch before any request of theirs arrived in it."""
    for rel, msg, at in releases:
        request_at = first_request.get(rel.release)
        if request_at is not None and request_at < at:
            # Its request came first in this very batch and is not committed yet: releasing
            # now would be ignored. Hand it back to the queue for the next batch.
            plan.deferred.append(msg)
            continue
        if request_at is not None:
            # The release came first: a cancel (or the end of a placed task), so the request
            # behind it must never be placed. Its items come after the release's; the store
            # then finds them duplicates of the cancel (or a conflict, for another body).
            released_first.add(rel.release)
        alloc = fleet.release(rel.release)
        if alloc is not None:
            plan._undo.append(_restore(fleet, alloc))
        plan.add(Release(task_id=rel.release), msg)

    # The requests of this batch by task id; their JSON is made only when an id comes twice.
    seen: dict[str, SchedulingRequest] = {}
    # Higher priority first; the sort is stable, so arrival order breaks ties.
    for req, msg in sorted(requests, key=lambda pair: -pair[0].priority):
        if req.task_id in seen or req.task_id in released_first or fleet.allocation(req.task_id) is not None:
            body = req.model_dump_json()
            first = seen.get(req.task_id)
            if first is not None and first.model_dump_json() == body:
                plan.duplicates.append(req.task_id)  # the same request twice in one batch
            else:
                # Placed already, or twice here with different bodies: the store compares
                # with what it holds, and reports a duplicate or a conflict.
                plan.add(
                    Failure(
                        task_id=req.task_id,
                        request_json=body,
                        reason=Reason.CONFLICT,
                        message="task id already exists with a different request",
                        strategy=req.strategy,
                        attempts=attempt_of(msg.headers),
                        callback_url=req.callback_url,
                    ),
                    msg,
                )
            continue
        seen[req.task_id] = req
        attempt = attempt_of(msg.headers)
        published = msg.headers.get(HEADER_PUBLISHED_AT)
        if isinstance(published, int) and not isinstance(published, bool):
            plan.published_at[req.task_id] = published
        if req.callback_url is not None:
            refusal = callback_refusal(req.callback_url)
            if refusal is not None:
                plan.add(
                    Failure(
                        task_id=req.task_id,
                        request_json=req.model_dump_json(),
                        reason=Reason.INVALID_REQUEST,
                        message=refusal,
                        strategy=req.strategy,
                        attempts=attempt,
                        callback_url=None,
                    ),
                    msg,
                )
                continue
        started = time.perf_counter()
        decision = placer.decide(fleet, req, now=now)
        plan.decision_seconds.append(time.perf_counter() - started)
        plan.decisions.append(decision)
        if decision.node_index is not None:
            fleet.reserve(decision.node_index, req)
            plan.placed[req.task_id] = req
            plan._undo.append(_unreserve(fleet, req.task_id))
            plan.add(
                Placement(
                    request=req,
                    node=decision.node or "",
                    node_ip=fleet.ips[decision.node_index],
                    strategy=decision.strategy,
                    message=decision.message,
                    attempts=attempt,
                ),
                msg,
            )
        elif decision.reason in RETRYABLE and attempt < retry.max_attempts:
            delay = retry.delay_ms(attempt, rng)
            plan.add(
                Waiting(
                    request=req,
                    message=f"attempt {attempt}/{retry.max_attempts}, retrying in "
                    f"{delay / 1000:.1f}s: {decision.message}",
                    attempts=attempt,
                    strategy=decision.strategy,
                ),
                msg,
            )
            plan.retries.append(RetryLater(msg, req, attempt + 1, delay))
        else:
            assert decision.reason is not None
            message = decision.message
            if decision.reason in RETRYABLE:
                message = f"gave up after {attempt} attempts: {message}"
            plan.add(
                Failure(
                    task_id=req.task_id,
                    request_json=req.model_dump_json(),
                    reason=decision.reason,
                    message=message,
                    strategy=decision.strategy,
                    attempts=attempt,
                    callback_url=req.callback_url,
                ),
                msg,
            )
    touched = requested_here | {rel.release for rel, _, _ in releases}
    for move, msg in moves:
        _plan_move(plan, fleet, placer, move, msg, (to_move or {}).get(move.move), touched, now)
    return plan


def _plan_move(
    plan: BatchPlan,
    fleet: FleetView,
    placer: Placer,
    move: MoveRequest,
    msg: Incoming,
    stored: SchedulingRequest | str | None,
    touched: set[str],
    now: float,
) -> None:
    """Check one move with every filter on the fleet and apply it there, or refuse it with the reason."""
    tid = move.move
    if tid in touched or tid in plan.moved:
        plan.deferred.append(msg)  # its task changes in this very batch: move it in the next one
        return
    held = fleet.allocation(tid)
    if isinstance(stored, str) or stored is None or held is None:
        why = stored if isinstance(stored, str) else f"task {tid} is not scheduled"
        plan.refused.append(DeadLetter(msg, f"move refused: {why}"))
        return
    if msg.redelivered and held.node == move.node:
        # Delivered again after its commit (the leader failed over or lost its channel before the ack):
        # the move was applied. Refused as "on the target already", a dead letter told the operator a
        # move that took place had not; acked now, like a request found placed already.
        plan.moves_done_before.append(tid)
        return
    outcome = check_move(
        fleet, stored, move.node, now=now, exclusive=placer.dedicated_exclusive,
        max_skew=placer.spread_max_skew, apply=True,
    )  # fmt: skip
    if not outcome.ok:
        plan.refused.append(DeadLetter(msg, f"move refused: {outcome.message}"))
        return
    plan.moved[tid] = (outcome, held)
    plan._undo.append(lambda: undo_move(fleet, outcome, held))
    target = fleet.index[move.node]
    plan.add(
        Move(
            task_id=tid,
            source=held.node,
            target=move.node,
            target_ip=fleet.ips[target],
            message=f"moved from {held.node} to {move.node}",
        ),
        msg,
    )


def _task_id_of(msg: Incoming) -> str | None:
    """The task id of a request whose body names none: its ``message_id``, when that is a valid one.

    Why not a fresh UUID (the model's default, right for the producer): the
    worker would make a new one at each delivery of the same message, so a
    redelivery after a crash between commit and ack placed the request a
    second time, and every retry through ``<queue>.retry`` left the task of
    the attempt before ``waiting`` for ever under an id nobody knew.
    """
    mid = msg.message_id
    return mid if mid is not None and valid_task_id(mid) else None


def _restore(fleet: FleetView, alloc: Allocation) -> Callable[[], None]:
    return lambda: fleet.restore(alloc)


def _unreserve(fleet: FleetView, task_id: str) -> Callable[[], None]:
    def undo() -> None:
        fleet.release(task_id)

    return undo


def _stored_body(body: bytes) -> str:
    """What to keep of an invalid body for the task record: strict JSON text, bounded in size."""
    text = body[:MAX_STORED_BODY].decode("utf-8", errors="replace")
    strict = safetext.strict_json_text(text)
    return strict if strict is not None else safetext.dumps({"invalid_body": safetext.scrub(text)})
