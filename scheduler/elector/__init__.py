"""Leader election: one elector loop (client-go's algorithm) over pluggable locks.

Backends: ``kubernetes`` (a coordination.k8s.io/v1 Lease), ``database`` (a row
of the ``leases`` table), ``none`` (always leader, one replica), ``auto``
(Kubernetes in a cluster, else database). See ``docs/election.md``.

The worker builds one with :func:`build_elector` and reads ``is_leader()`` and
``epoch``; ``scheduler leader`` uses :func:`read_leader`.
"""

from scheduler.elector.database_lock import DatabaseLeaseLock
from scheduler.elector.elector import Elector
from scheduler.elector.factory import build_elector, build_lock, read_leader, resolve_backend
from scheduler.elector.kubernetes_lock import KubernetesLeaseLock
from scheduler.elector.none import AlwaysLeader
from scheduler.elector.record import (
    LeaderElectionRecord,
    LeaderElector,
    LeaderInfo,
    Lock,
    LockConflict,
    LockError,
)

__all__ = [
    "AlwaysLeader",
    "DatabaseLeaseLock",
    "Elector",
    "KubernetesLeaseLock",
    "LeaderElectionRecord",
    "LeaderElector",
    "LeaderInfo",
    "Lock",
    "LockConflict",
    "LockError",
    "build_elector",
    "build_lock",
    "read_leader",
    "resolve_backend",
]
