"""Committing one planned batch, with poison isolation: from commit items to an explicit outcome.

Why a separate object: the daemon must treat "the database is gone", "a
newer leader holds the fence" and "one message in this batch can never be
stored" in three different ways, and the last must never look like the first
(a batch requeued forever behind one bad message stalls everything). So the
commit returns one of:

* :class:`Committed`: everything that could be stored is stored; the
  ``poisoned`` items were isolated and became a failed task or must be
  dead-lettered;
* :class:`Fenced`: a newer leader holds the fence; nothing was written by
  the refused part;
* :class:`DatabaseDown`: the connection was lost or refused (or the
  database failed in a way no single message explains); the batch must be
  requeued. Parts of it may already be committed, which is harmless: every
  commit is idempotent (a redelivered request is a duplicate, a repeated
  release is ignored).

Isolation is a bisection without recursion: a work list of item ranges,
each committed on its own; a range that fails for a data reason is split in
two, until the offending item is alone. Then it is stored as a plain
``failed`` task with the error as its message (when even that fails, or it
is a release, it is dead-lettered). Items keep their order: the left half
always commits before the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from scheduler.models import Reason
from scheduler.safetext import first_line
from scheduler.store import CommitItem, CommitResult, Failure, FencedOut, Move, Release
from scheduler.store.engine import DatabaseUnavailable


class Committer(Protocol):
    """What the pipeline needs of the store (``Store.commit``)."""

    def commit(self, items: Sequence[CommitItem], epoch: int) -> CommitResult: ...


@dataclass(frozen=True)
class Poisoned:
    """An item that could not be stored with the rest; ``index`` into the batch's items."""

    index: int
    error: str
    stored_as_failure: bool
    """True: the task is now ``failed`` with the error as its message; False: dead-letter its message."""


@dataclass(frozen=True)
class Committed:
    result: CommitResult
    poisoned: tuple[Poisoned, ...] = ()
    commits: int = 1


@dataclass(frozen=True)
class Fenced:
    error: FencedOut


@dataclass(frozen=True)
class DatabaseDown:
    error: str
    suspect: bool = False
    """Not shown to be the database's doing (a bug in the commit path, or an isolation that gave up):
    the batch's redeliveries still count against its messages, so one that causes it is
    dead-lettered after ``worker.max_redeliveries`` instead of requeued for ever."""


Outcome = Committed | Fenced | DatabaseDown


def is_connection_error(exc: BaseException) -> bool:
    """True for errors that say the database is unreachable or unwell, not that the data is bad.

    Lost or refused connections, timeouts, locks, and server-side failures no
    single row explains (a missing table, an internal error): requeue and wait.
    """
    if isinstance(exc, DatabaseUnavailable | OperationalError | InterfaceError | PoolTimeout):
        return True
    if isinstance(exc, InternalError | ProgrammingError | NotSupportedError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def describe(exc: BaseException) -> str:
    """The first line of an error, printable and bounded (for logs, messages and headers)."""
    return first_line(getattr(exc, "orig", None) or exc)


@dataclass
class CommitPipeline:
    """Commits a batch's items under the fence, isolating poison; see the module docstring."""

    store: Committer
    max_commits: int = 4096
    """Upper bound on transactions for one batch (a bisection needs about 2 log2 n per bad item)."""

    def commit(self, items: Sequence[CommitItem], epoch: int) -> Outcome:
        try:
            return Committed(self.store.commit(items, epoch) if items else CommitResult())
        except FencedOut as exc:
            return Fenced(exc)
        except Exception as exc:
            if is_connection_error(exc):
                return DatabaseDown(describe(exc))
            error = describe(exc)
        return self._isolate(items, epoch, error)

    def _isolate(self, items: Sequence[CommitItem], epoch: int, error: str) -> Outcome:
        """Bisect ``items`` (whose commit failed with ``error``) until each bad item is alone."""
        result = CommitResult()
        poisoned: list[Poisoned] = []
        commits = 1
        n = len(items)
        # Ranges still to commit, the next one on top; a range of one that failed carries its error.
        work: list[tuple[int, int, str | None]] = (
            [(0, 1, error)] if n == 1 else [(n // 2, n, None), (0, n // 2, None)]
        )
        while work:
            lo, hi, failed = work.pop()
            if failed is None:
                if commits > self.max_commits:
                    gave_up = "too many failing commits while isolating a bad message"
                    return DatabaseDown(gave_up, suspect=True)
                commits += 1
                try:
                    result = result.merged(self.store.commit(items[lo:hi], epoch))
                    continue
                except FencedOut as exc:
                    return Fenced(exc)
                except Exception as exc:
                    if is_connection_error(exc):
                        return DatabaseDown(describe(exc))
                    failed = describe(exc)
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    work.append((mid, hi, None))
                    work.append((lo, mid, None))
                    continue
            commits += 1
            single = self._fallback(items, lo, epoch, failed)
            if isinstance(single, Fenced | DatabaseDown):
                return single
            result = result.merged(single[0])
            poisoned.append(single[1])
        return Committed(result, tuple(poisoned), commits)

    def _fallback(
        self, items: Sequence[CommitItem], index: int, epoch: int, error: str
    ) -> tuple[CommitResult, Poisoned] | Fenced | DatabaseDown:
        item = items[index]
        if isinstance(item, Release | Move):  # a task that exists: never turned into a failure
            return CommitResult(), Poisoned(index, error, stored_as_failure=False)
        failure = Failure(
            task_id=item.task_id,
            request_json=None,
            reason=Reason.INVALID_REQUEST,
            message=f"the request could not be stored: {error}",
            strategy=None,
            attempts=getattr(item, "attempts", 1),
            callback_url=None,
        )
        try:
            return self.store.commit([failure], epoch), Poisoned(index, error, stored_as_failure=True)
        except FencedOut as exc:
            return Fenced(exc)
        except Exception as exc:
            if is_connection_error(exc):
                return DatabaseDown(describe(exc))
            return CommitResult(), Poisoned(index, f"{error}; as a failure: {describe(exc)}", False)


__all__ = [
    "CommitPipeline",
    "Committed",
    "DatabaseDown",
    "Fenced",
    "Outcome",
    "Poisoned",
    "describe",
    "is_connection_error",
]
