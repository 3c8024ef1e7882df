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


def settle_long_running_process() -> None:
    """Freeze what start-up made, so no later collection scans it again.

    Why: a worker holds a few hundred thousand objects from start-up
    (modules, pydantic and SQLAlchemy schemas, settings, the engine) that are
    never garbage, and the collections its placements trigger kept
    re-scanning them: 0.55-0.73 s of collection in a 10,000-request burst,
    about a fifth of the worker's CPU time (start-up included), measured
    with ``gc.callbacks``. ``gc.freeze`` moves them out of every later scan
    (0.04 s in the same burst). The thresholds stay Python's: raising the
    young one to 10,000 saved a little more CPU but doubled the
    publish-to-commit p50 on PostgreSQL (``bench/bench_pipeline.py``).
    """
    gc.collect()
    gc.freeze()
