"""Durable state: the SQL store (SQLite or PostgreSQL), its migrations and its value types.

``Store`` is built from an engine by whoever owns the process (worker, CLI,
HTTP API); nothing here opens a connection at import time.
"""

from scheduler.store.engine import DatabaseUnavailable, make_engine
from scheduler.store.errors import FencedOut, NodesFileError, NotMigrated, UnknownNode
from scheduler.store.nodesfile import load_nodes_file, parse_nodes
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
from scheduler.store.store import Store

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
