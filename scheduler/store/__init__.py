"""Durable state: the SQL store (SQLite or PostgreSQL), its migrations and its value types.

``Store`` is built from an engine by whoever owns the process (worker, CLI,
HTTP API); nothing here opens a connection at import time.

The value types (:mod:`scheduler.store.records`: what a batch asks the store
to write, and what it answers) are pure and imported at once; everything
that needs SQLAlchemy is imported on first use (PEP 562 ``__getattr__``), so
the planning core can name the records without loading a database library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scheduler.store.records import (
    CommitItem,
    CommitResult,
    Failure,
    ImportCounts,
    Move,
    NodeUsage,
    Placement,
    Release,
    TaskRecord,
    Waiting,
)

if TYPE_CHECKING:
    from scheduler.store.engine import DatabaseUnavailable, make_engine
    from scheduler.store.errors import FencedOut, NodesFileError, NotMigrated, UnknownNode
    from scheduler.store.nodesfile import load_nodes_file, parse_nodes
    from scheduler.store.store import Store

_LAZY = {
    "DatabaseUnavailable": "scheduler.store.engine",
    "make_engine": "scheduler.store.engine",
    "FencedOut": "scheduler.store.errors",
    "NodesFileError": "scheduler.store.errors",
    "NotMigrated": "scheduler.store.errors",
    "UnknownNode": "scheduler.store.errors",
    "load_nodes_file": "scheduler.store.nodesfile",
    "parse_nodes": "scheduler.store.nodesfile",
    "Store": "scheduler.store.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CommitItem",
    "CommitResult",
    "DatabaseUnavailable",
    "Failure",
    "FencedOut",
    "ImportCounts",
    "Move",
    "NodeUsage",
    "NodesFileError",
    "NotMigrated",
    "Placement",
    "Release",
    "Store",
    "TaskRecord",
    "UnknownNode",
    "Waiting",
    "load_nodes_file",
    "make_engine",
    "parse_nodes",
]
