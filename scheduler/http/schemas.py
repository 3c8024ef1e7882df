"""Response bodies of the HTTP API, as pydantic models so that ``/openapi.json`` documents them.

Why models and not plain dicts: the OpenAPI document is a contract that
clients (and the schemathesis fuzz run in the tests) check responses
against; a dict would publish ``{}`` as the schema of every answer.

The request body is :class:`scheduler.models.SchedulingRequest` itself: the
HTTP API and the queue accept exactly the same message, validated by the
same strict model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.models import Reason, TaskStatus


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorBody(_Out):
    """Any error other than a validation error: ``{"detail": "what went wrong"}``."""

    detail: str


class Health(_Out):
    status: Literal["ok"] = "ok"


class Readiness(_Out):
    """``/readyz``: each check's verdict, and the reasons when not ready."""

    ready: bool
    role: Literal["leader", "standby", "api"] = Field(
        description="leader: commits placements; standby: waits for the lease; api: no worker in this process"
    )
    checks: dict[str, str] = Field(description="check name -> 'ok' or what is wrong")
    reasons: list[str] = Field(default_factory=list)


class Accepted(_Out):
    """``POST /schedule`` answer: the task id to poll (generated when the request had none)."""

    task_id: str


class Conflict(_Out):
    """``POST /schedule`` with a task id that exists: what that task is doing, and nothing published."""

    detail: str
    task_id: str
    status: TaskStatus


class NodeRef(_Out):
    name: str
    ip: str | None


class Result(_Out):
    """``GET /result/{id}`` in the first prototype's shapes.

    ``{"status": "processing"}`` while queued or waiting; ``{"status":
    "completed", "result": {"name", "ip"}}`` once placed (also after a
    release: the placement did happen); ``{"status": "failed", "error":
    "..."}`` with the human explanation. Keys that do not apply are left out,
    as the prototype did.
    """

    status: Literal["processing", "completed", "failed"]
    result: NodeRef | None = None
    error: str | None = None


class TaskDetail(_Out):
    """``GET /tasks/{id}``: the full record (``scheduler status --json``)."""

    task_id: str
    status: TaskStatus
    node: str | None
    node_ip: str | None
    reason: Reason | None
    message: str | None
    attempts: int
    strategy: str | None
    request: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class Resources(_Out):
    """cpu, memory, disk, vms, and one more integer key per kind of countable device (``gpu``...)
    that is present: the same shape as ``allocated`` in ``scheduler nodes list --json``."""

    model_config = ConfigDict(frozen=True, extra="allow")
    __pydantic_extra__: dict[str, int] = Field(init=False)

    cpu: int
    memory: int
    disk: int
    vms: int


class Utilization(_Out):
    """Allocated / capacity per resource, 0..1 (0 where the capacity is 0)."""

    cpu: float
    memory: float
    disk: float
    vms: float


class NodeOut(_Out):
    """``GET /nodes``: a node's inventory fields, what is allocated on it, and the ratio."""

    name: str
    ip: str
    pool: str
    dedicated: bool
    cpu: int
    memory: int
    disk: int
    max_vms: int
    tags: list[str]
    zone: str | None
    cordoned: bool
    allocated: Resources
    utilization: Utilization = Field(description="allocated / effective capacity")
    resources: dict[str, int] = Field(default_factory=dict, description="countable devices (raw = effective)")
    reserved: dict[str, int | None] | None = Field(
        default=None, description="kept for the host; null (or a null key): the configured default"
    )
    cpu_allocation_ratio: float | None = None
    memory_allocation_ratio: float | None = None
    disk_allocation_ratio: float | None = None
    effective: Resources | None = Field(
        default=None, description="floor((capacity - reserved) x ratio): cpu, memory, disk; max_vms, devices"
    )
    overcommitted: bool = Field(
        default=False, description="holds more than its effective capacity (a ratio lowered under it)"
    )


# ------------------------------------------------------------------ dashboard


class PoolSummary(_Out):
    pool: str
    nodes: int
    cordoned: int
    capacity: Resources
    allocated: Resources
    utilization: Utilization


class NodeColumns(_Out):
    """Every node, column-wise (one array per field, same order): a tenth of the bytes of objects."""

    name: list[str]
    pool: list[str]
    ip: list[str]
    cpu: list[float]
    memory: list[float]
    disk: list[float]
    vms: list[int]
    max_vms: list[int]
    cordoned: list[bool]
    zone: list[str | None] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list, description='devices in use per node, e.g. "gpu 3/8"')
    overcommitted: list[bool] = Field(default_factory=list)


class RecentTask(_Out):
    task_id: str
    status: TaskStatus
    node: str | None
    node_ip: str | None
    reason: Reason | None
    message: str | None
    strategy: str | None
    attempts: int
    requested_cpu: int | None
    requested_memory: int | None
    pool: str | None
    updated_at: datetime


class LeaderSummary(_Out):
    """Who commits now (the fence row: the newest leader), and the strategy it uses."""

    identity: str | None
    epoch: int
    strategy: str
    strategy_source: Literal["leader", "configured"] = Field(
        description="leader: reported live by this replica, the leader; configured: from this replica's "
        "configuration (which every replica reloads from the same file)"
    )


class ReplicaSummary(_Out):
    """The replica that answered: its identity, role and worker counters."""

    identity: str
    role: Literal["leader", "standby", "api"]
    epoch: int
    broker_connected: bool | None
    committed: int
    groups: int
    last_commit_at: datetime | None


class Summary(_Out):
    """``GET /api/summary``: everything the dashboard shows, in one request."""

    generated_at: datetime
    leader: LeaderSummary
    replica: ReplicaSummary
    tasks: dict[str, int]
    webhooks: dict[str, int]
    pools: list[PoolSummary]
    nodes: NodeColumns
    recent_placements: list[RecentTask]
    recent_failures: list[RecentTask]
    waiting: list[RecentTask]


class PlanCandidate(_Out):
    node: str
    score: float | None = Field(description="lower wins; null for a strategy without scores")


class PlanOut(_Out):
    """``POST /plan``: the decision the strategy would take now, and its explanation; nothing reserved."""

    task_id: str
    node: str | None = Field(description="the node the strategy would pick, null when none fits")
    strategy: str
    candidates: list[PlanCandidate] = Field(description="the pick first, then the best-scored (up to 5)")
    rejections: dict[str, int] = Field(description="filter label -> nodes it removed")
    examples: dict[str, list[str]] = Field(description="filter label -> up to 5 nodes it removed, why")
    reason: str | None
    message: str
    feasible: int
    total: int
    revision: str | None = Field(description="the committed state it was computed from")
