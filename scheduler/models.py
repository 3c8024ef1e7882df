"""Wire and domain models: the message contract of DESIGN.md, nodes, decisions.

Everything that crosses a process boundary is validated here, strictly: a
string is never coerced into a number, a bool is never an int, unknown fields
are refused so that typos surface, and every number has a bound so that an
absurd value (``10**30``) is an error instead of an overflow somewhere deeper.
The bounds are generous for real hardware and tight enough to keep the fleet
arrays in 64-bit integers with room to spare.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    StringConstraints,
    ValidationError,
    field_serializer,
    field_validator,
)

SCHEMA_VERSION = 1
"""Sent as the ``x-schema-version`` header on every message the producer publishes."""

# Limits. A single VM larger than these is a typo, not a workload.
MAX_CPU = 4096  # vCPUs per VM / per node
MAX_MEMORY = 64 * 1024 * 1024  # MiB (64 TiB)
MAX_DISK = 1024 * 1024  # GiB (1 PiB)
MAX_VMS = 100_000
MAX_PRIORITY = 1_000_000
MAX_TAGS = 64
MAX_BODY_BYTES = 64 * 1024
"""A request body larger than this is refused before JSON parsing (no honest request needs it)."""

TaskId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
StrategyName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]


class TaskStatus(enum.StrEnum):
    """Task lifecycle of DESIGN.md; ``scheduled``, ``failed`` and ``released`` are terminal."""

    QUEUED = "queued"
    WAITING = "waiting"
    SCHEDULED = "scheduled"
    FAILED = "failed"
    RELEASED = "released"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SCHEDULED, TaskStatus.FAILED, TaskStatus.RELEASED)


class Reason(enum.StrEnum):
    """Machine-readable failure reason codes (DESIGN.md, task lifecycle)."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_POOL = "unknown_pool"
    INSUFFICIENT_RESOURCES = "insufficient_resources"
    NO_ONLINE_NODES = "no_online_nodes"
    UNKNOWN_STRATEGY = "unknown_strategy"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    """Released before it was placed: the request is never placed, even if it arrives later."""
    CONFLICT = "conflict"
    """The task id already exists with a different request; the newcomer fails, the original stays."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SchedulingRequest(_Strict):
    """A request to place one VM (the message contract of DESIGN.md)."""

    task_id: TaskId = Field(default_factory=lambda: str(uuid.uuid4()))
    requested_cpu: int = Field(ge=1, le=MAX_CPU, description="vCPUs")
    requested_memory: int = Field(ge=1, le=MAX_MEMORY, description="MiB")
    requested_disk: int = Field(default=0, ge=0, le=MAX_DISK, description="GiB")
    requested_pool: Name = "default"
    dedicated: bool = False
    required_tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    strategy: StrategyName | None = None
    anti_affinity_group: GroupName | None = None
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    callback_url: str | None = Field(default=None, max_length=2048)

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        import httpx

        try:
            url = httpx.URL(value)
        except Exception as exc:  # httpx raises several types for bad URLs
            raise ValueError(f"not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        if not value.isprintable() or not value.isascii():
            # Control characters and raw non-ASCII have no place in a URL (percent-encode them);
            # refusing them keeps every stored request printable and encodable.
            raise ValueError("must be printable ASCII (percent-encode anything else)")
        return value


class ReleaseRequest(_Strict):
    """``{"release": TASK_ID}``: the VM is gone, give its capacity back."""

    release: TaskId


class Heartbeat(_Strict):
    """A node saying it is alive, optionally with its live usage (fractions 0..1)."""

    node: Name
    cpu_usage: float | None = Field(default=None, ge=0, le=1)
    memory_usage: float | None = Field(default=None, ge=0, le=1)


class Node(_Strict):
    """A bare-metal server in the inventory (``scheduler nodes import``)."""

    name: Name
    ip: IPvAnyAddress
    pool: Name = "default"
    dedicated: bool = False
    cpu: int = Field(ge=1, le=MAX_CPU, description="allocatable vCPUs")
    memory: int = Field(ge=1, le=MAX_MEMORY, description="MiB")
    disk: int = Field(default=0, ge=0, le=MAX_DISK, description="GiB")
    max_vms: int = Field(default=MAX_VMS, ge=1, le=MAX_VMS)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    zone: Name | None = None
    cordoned: bool = False

    @field_serializer("ip")
    def _ip_str(self, ip: Any) -> str:
        return str(ip)

    @field_validator("ip", mode="before")
    @classmethod
    def _ip_from_str(cls, value: Any) -> Any:
        # Strict mode refuses plain strings for IP types; a string is the only
        # sensible way to write an address in YAML or JSON, so parse it here.
        if isinstance(value, str):
            import ipaddress

            try:
                return ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("not a valid IPv4 or IPv6 address") from None
        return value


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one placement attempt, with its explanation.

    ``rejections`` counts, per reason label (``insufficient memory``,
    ``pool mismatch``...), how many nodes were filtered out, each node counted
    once under the first filter it failed, so that the counts add up to the
    fleet size on a failure. A plain dataclass, not a pydantic model: one is
    built per decision on the hot path and never comes from untrusted input.
    """

    task_id: str
    strategy: str
    node: str | None = None
    node_index: int | None = None
    reason: Reason | None = None
    message: str = ""
    rejections: dict[str, int] = field(default_factory=dict)
    candidates: int = 0
    total: int = 0

    @property
    def placed(self) -> bool:
        return self.node is not None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, ``field: rule``, for CLIs, logs and dead-letter headers.

    Field names come from the input (an unknown key is named as sent), so
    they are made printable: a NUL or a lone surrogate in a key must not
    make the failure itself unstorable.
    """
    from scheduler.safetext import printable

    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(printable(str(p), 200) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {printable(err['msg'])}")
    return printable("; ".join(parts), 2000)


def parse_message(body: bytes) -> SchedulingRequest | ReleaseRequest:
    """Decode one queue message; raises :class:`BadMessage` with a reason code.

    The order of checks matters for the "loses nothing" rule: whenever a
    task id can be read from the body, the error carries it so the worker can
    record a ``failed`` task instead of dead-lettering an anonymous message.
    """
    from scheduler import safetext

    if len(body) > MAX_BODY_BYTES:
        raise BadMessage(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}", None)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadMessage(f"body is not UTF-8: {exc.reason} at byte {exc.start}", None) from None
    if not text.strip():
        raise BadMessage("empty body", None)
    try:
        # NaN/Infinity stay strings and lone surrogates become U+FFFD, so they fail
        # validation with a field name instead of reaching the database.
        data = safetext.loads(text)
    except RecursionError:
        raise BadMessage("JSON nested too deeply", None) from None
    except ValueError as exc:
        raise BadMessage(f"malformed JSON: {safetext.printable(str(exc), 300)}", None) from None
    if not isinstance(data, dict):
        raise BadMessage(f"expected a JSON object, got {type(data).__name__}", None)
    task_id = data.get("task_id")
    readable_id = task_id if isinstance(task_id, str) and _valid_task_id(task_id) else None
    if "release" in data and len(data) == 1:
        try:
            return ReleaseRequest.model_validate(data)
        except ValidationError as exc:
            raise BadMessage(format_validation_error(exc), None) from None
    try:
        return SchedulingRequest.model_validate(data)
    except ValidationError as exc:
        raise BadMessage(format_validation_error(exc), readable_id) from None


def parse_json_line(line: str) -> SchedulingRequest | ReleaseRequest:
    """One line of a JSON-lines file (``submit --file``, ``simulate --requests``).

    Raises ValueError with ``field: rule`` text; the caller adds the line number.
    """
    import json

    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    try:
        if "release" in data:
            return ReleaseRequest.model_validate(data)
        return SchedulingRequest.model_validate(data)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc)) from None


def _valid_task_id(value: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", value) is not None


class BadMessage(Exception):
    """A message that can never be processed; ``task_id`` is set when it could be read."""

    def __init__(self, message: str, task_id: str | None, reason: Reason = Reason.INVALID_REQUEST):
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.reason = reason


MessageKind = Literal["request", "release", "heartbeat"]
