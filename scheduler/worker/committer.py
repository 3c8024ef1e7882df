"""The committer thread: runs the commit pipeline for one planned batch at a time, in order.

Why a thread: the database round trip of one batch overlaps the planning
and consuming of the next (the worker's thread owns pika and the fleet,
which are not thread-safe; this thread touches only the store, through
:class:`~scheduler.worker.pipeline.CommitPipeline`, and the job it was
handed). The job carries its explicit outcome back.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from scheduler.safetext import printable
from scheduler.worker.batch import BatchPlan, Incoming
from scheduler.worker.pipeline import CommitPipeline, DatabaseDown, Outcome


@dataclass
class InFlight:
    """A planned batch handed to the committer thread, and what became of it."""

    plan: BatchPlan
    batch: list[Incoming]
    epoch: int
    started: float
    releases: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None


class Committer:
    """One thread that runs the commit pipeline for one batch at a time, in submission order.

    It touches nothing but the store and the job: pika and the fleet stay on
    the worker's thread.
    """

    def __init__(self, pipeline: CommitPipeline) -> None:
        self._pipeline = pipeline
        self._jobs: queue.SimpleQueue[InFlight | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()

    def submit(self, job: InFlight) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.outcome = self._pipeline.commit(job.plan.items, job.epoch)
            except BaseException as exc:  # a bug, not a data or database problem: requeue and say so
                job.outcome = DatabaseDown(
                    f"unexpected {type(exc).__name__}: {printable(str(exc), 300)}", suspect=True
                )
            finally:
                job.done.set()


__all__ = ["Committer", "InFlight"]
