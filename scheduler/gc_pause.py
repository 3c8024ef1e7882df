"""Pausing Python's cyclic garbage collector around a bulk build of acyclic objects.

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
