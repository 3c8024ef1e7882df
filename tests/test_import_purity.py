"""The planning core imports no I/O library: models, fleet, strategies, planning and simulate.

Why a fresh interpreter: within the test process every library is already
loaded by other tests, so ``sys.modules`` says nothing. Each check runs a new
Python that imports the core (and builds every registered strategy, whose
modules load on first use) and lists which forbidden modules came with it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE = [
    "scheduler.models",
    "scheduler.fleet",
    "scheduler.strategies",
    "scheduler.strategies.filters",
    "scheduler.worker.batch",
    "scheduler.worker.redelivery",
    "scheduler.worker.memory_source",
    "scheduler.store.records",
    "scheduler.message_headers",
    "scheduler.safetext",
    "scheduler.simulate",
]
FORBIDDEN = ["pika", "sqlalchemy", "httpx", "alembic", "psycopg", "scheduler.webhooks", "scheduler.broker"]

PROBE = """
import importlib, json, sys
for name in {core!r}:
    importlib.import_module(name)
from scheduler.strategies import STRATEGY_NAMES, get_strategy
for name in STRATEGY_NAMES:
    get_strategy(name)
loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in {forbidden!r}))
print(json.dumps(loaded))
"""


def loaded_by(core: list[str]) -> list[str]:
    """The forbidden modules a fresh interpreter holds after importing ``core``."""
    code = PROBE.format(core=core, forbidden=FORBIDDEN)
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_the_core_loads_no_io_library() -> None:
    assert loaded_by(CORE) == []


@pytest.mark.parametrize("module", ["scheduler.worker.daemon", "scheduler.store"])
def test_the_probe_sees_an_io_library_when_one_is_loaded(module: str) -> None:
    """The check can fail: the worker daemon does load pika and SQLAlchemy."""
    extra = ["scheduler.store.store"] if module == "scheduler.store" else [module]
    loaded = loaded_by(CORE + extra)
    assert "sqlalchemy" in loaded
