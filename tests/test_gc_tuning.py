"""The collector tuning the worker applies at start-up, checked in a fresh interpreter (process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_settling_freezes_start_up_objects_and_keeps_the_thresholds() -> None:
    code = (
        "import gc, json\n"
        "before = gc.get_threshold()\n"
        "from scheduler.gc_tuning import settle_long_running_process\n"
        "settle_long_running_process()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, frozen = json.loads(out)
    assert after == before
    assert frozen > 1000  # the interpreter's and the package's own objects, out of every later scan


def test_the_pause_restores_the_collector_even_on_an_error() -> None:
    import gc

    from scheduler.gc_tuning import cycle_collection_paused

    assert gc.isenabled()
    try:
        with cycle_collection_paused():
            assert not gc.isenabled()
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert gc.isenabled()
