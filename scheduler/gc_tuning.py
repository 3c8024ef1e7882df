"""Tuning Python's cyclic garbage collector: paused around bulk builds, settled for a long-running worker.

Why a module of its own: the simulator's replay and the store's bulk reads
both allocate tens of thousands of plain objects (dataclasses, dicts,
arrays) that reference counting frees; each collection the allocations
trigger re-scans everything alive and finds nothing, and a full one once
took a sixth of a replay. Pure (standard library only), so the core may use it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block and put it back as it was (even on an error).

    Only for code that makes no reference cycles: a cycle made inside the
    block is collected later, by the next collection after it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


YOUNG_THRESHOLD = 10_000
"""Container allocations between two young collections in a long-running process (Python's default: 700)."""


def settle_long_running_process(young: int = YOUNG_THRESHOLD) -> None:
    """Freeze what start-up made and collect the young generation less often.

    Why: a worker holds a few hundred thousand objects from start-up
    (modules, pydantic and SQLAlchemy schemas, settings, the engine) that are
    never garbage, and each placement allocates short-lived containers that
    reference counting frees. With the defaults the collector kept re-scanning
    the start-up objects: measured at 0.55-0.73 s of collection in a
    10,000-request burst, about a fifth of the worker's CPU time (start-up
    included). ``gc.freeze``
    moves them out of every later scan; a larger young threshold (the older
    generations keep theirs) makes young collections rarer and no dearer.
    """
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
