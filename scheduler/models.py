"""Wire and domain models: the message contract of docs/contracts.md, nodes, decisions.

Everything that crosses a process boundary is validated here, strictly: a
string is never coerced into a number, a bool is never an int, unknown fields
are refused so that typos surface, and every number has a bound so that an
absurd value (``10**30``) is an error instead of an overflow somewhere deeper.
The bounds are generous for real hardware and tight enough to keep the fleet
arrays in 64-bit integers with room to spare.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    StringConstraints,
    ValidationError,
    ValidationInfo,
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
MAX_DEVICES = 4096  # countable devices of one kind per node / per VM
MAX_RESOURCE_KINDS = 16  # kinds of countable devices per node / per VM
MAX_ALLOCATION_RATIO = 100.0
MAX_BODY_BYTES = 64 * 1024
"""A request body larger than this is refused before JSON parsing (no honest request needs it)."""

TASK_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
"""A node or pool name."""
TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
StrategyName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Mode = Literal["hard", "soft"]

RESOURCE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
BUILTIN_RESOURCES = frozenset({"cpu", "memory", "disk", "vms", "max_vms"})
"""Names a countable device may not take: they are node fields with their own accounting."""
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_RESOURCE_RE = re.compile(RESOURCE_NAME_PATTERN)


def _tag_expression(value: str) -> str:
    """``a`` or ``a|b|c`` (any one of the alternatives); every alternative must be a valid tag."""
    parts = value.split("|")
    for part in parts:
        if not part:
            raise ValueError(f"{value!r} has an empty alternative (write `a|b`, not `a|` or `|b`)")
        if not _TAG_RE.match(part):
            raise ValueError(f"{part!r} does not match the tag pattern [A-Za-z0-9][A-Za-z0-9._/-]{{0,62}}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"{value!r} repeats an alternative")
    return value


TagExpression = Annotated[str, StringConstraints(max_length=512), AfterValidator(_tag_expression)]


def _resource_counts(value: dict[str, int]) -> dict[str, int]:
    """Device name -> count: names ``[a-z][a-z0-9_-]{0,31}`` and not a built-in resource, counts >= 1."""
    if len(value) > MAX_RESOURCE_KINDS:
        raise ValueError(f"at most {MAX_RESOURCE_KINDS} kinds of device, got {len(value)}")
    for name, count in value.items():
        if not _RESOURCE_RE.match(name):
            raise ValueError(f"{name!r}: a resource name is [a-z][a-z0-9_-]{{0,31}}")
        if name in BUILTIN_RESOURCES:
            raise ValueError(f"{name!r} is a built-in resource: use its own field, not `resources`")
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"{name}: the count must be an integer, got {type(count).__name__}")
        if count < 1:
            raise ValueError(f"{name}: the count must be >= 1, got {count}")
        if count > MAX_DEVICES:
            raise ValueError(f"{name}: the count must be <= {MAX_DEVICES}, got {count}")
    return dict(sorted(value.items()))


ResourceCounts = Annotated[dict[str, Any], AfterValidator(_resource_counts)]
"""Countable devices (``{"gpu": 2}``), validated with one message per bad entry naming it."""
AllocationRatio = Annotated[float, Field(gt=0, le=MAX_ALLOCATION_RATIO, allow_inf_nan=False)]


class TaskStatus(enum.StrEnum):
    """Task lifecycle of docs/contracts.md; ``scheduled``, ``failed`` and ``released`` are terminal."""

    QUEUED = "queued"
    WAITING = "waiting"
    SCHEDULED = "scheduled"
    FAILED = "failed"
    RELEASED = "released"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SCHEDULED, TaskStatus.FAILED, TaskStatus.RELEASED)


class Reason(enum.StrEnum):
    """Machine-readable failure reason codes (docs/contracts.md, task lifecycle)."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_POOL = "unknown_pool"
    INSUFFICIENT_RESOURCES = "insufficient_resources"
    NO_ONLINE_NODES = "no_online_nodes"
    UNKNOWN_STRATEGY = "unknown_strategy"
    EXPIRED = "expired"
    """Listed in the contract's reason codes; the scheduler itself never produces it."""
    CANCELLED = "cancelled"
    """Released before it was placed: the request is never placed, even if it arrives later."""
    CONFLICT = "conflict"
    """The task id already exists with a different request; the newcomer fails, the original stays."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SchedulingRequest(_Strict):
    """A request to place one VM (the message contract of docs/contracts.md)."""

    task_id: TaskId = Field(default_factory=lambda: str(uuid.uuid4()))
    requested_cpu: int = Field(ge=1, le=MAX_CPU, description="vCPUs")
    requested_memory: int = Field(ge=1, le=MAX_MEMORY, description="MiB")
    requested_disk: int = Field(default=0, ge=0, le=MAX_DISK, description="GiB")
    requested_pool: Name = "default"
    dedicated: bool = False
    required_tags: list[TagExpression] = Field(default_factory=list, max_length=MAX_TAGS)
    strategy: StrategyName | None = None
    anti_affinity_group: GroupName | None = None
    priority: int = Field(default=0, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    callback_url: str | None = Field(default=None, max_length=2048)
    requested_resources: ResourceCounts = Field(default_factory=dict, description="countable devices")
    forbidden_tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    anti_affinity_mode: Mode = "hard"
    spread_group: GroupName | None = None
    spread_mode: Mode = "hard"

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
    """A node saying it is alive, optionally with its live usage (fractions 0..1).

    Only the node name is used (liveness). The usage fields are part of the
    message contract and are validated, so an agent that sends them is not
    refused, but no strategy or figure reads them.
    """

    node: Name
    cpu_usage: float | None = Field(default=None, ge=0, le=1)
    memory_usage: float | None = Field(default=None, ge=0, le=1)


class Reserve(_Strict):
    """What a node keeps for its host (hypervisor, agents); a key left out takes the configured default."""

    cpu: int | None = Field(default=None, ge=0, le=MAX_CPU)
    memory: int | None = Field(default=None, ge=0, le=MAX_MEMORY)
    disk: int | None = Field(default=None, ge=0, le=MAX_DISK)


class Node(_Strict):
    """A bare-metal server in the inventory (``scheduler nodes import``).

    ``reserved`` and the ``*_allocation_ratio`` fields are optional: None
    means "the configured default" (``reserved`` / ``allocation_ratios`` in
    config.yaml), resolved when a fleet view is built, so that changing the
    default reaches every node that did not set its own.
    """

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
    resources: ResourceCounts = Field(default_factory=dict, description="countable devices")
    reserved: Reserve | None = None
    cpu_allocation_ratio: AllocationRatio | None = None
    memory_allocation_ratio: AllocationRatio | None = None
    disk_allocation_ratio: AllocationRatio | None = None

    @field_validator("reserved")
    @classmethod
    def _reserve_within_capacity(cls, reserved: Reserve | None, info: ValidationInfo) -> Reserve | None:
        # cpu, memory and disk are declared before `reserved`, so they are in info.data when valid.
        if reserved is not None:
            for key in ("cpu", "memory", "disk"):
                kept, capacity = getattr(reserved, key), info.data.get(key)
                if kept is not None and capacity is not None and kept > capacity:
                    raise ValueError(f"{key}: {kept} is larger than the capacity ({key}: {capacity})")
        return reserved

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
        parts.append(f"{loc}: {printable(err['msg'].removeprefix('Value error, '))}")
    return printable("; ".join(parts), 2000)


def parse_message(body: bytes) -> SchedulingRequest | ReleaseRequest | MoveRequest:
    """Decode one queue message; raises :class:`BadMessage` with a reason code.

    Two paths, one answer. The common message, a valid scheduling request,
    is validated straight from the bytes by pydantic's own JSON parser
    (about a seventh of the careful path's cost, which was the largest share
    of the worker's parsing time). That parser accepts no more than
    :func:`parse_careful` does wherever a valid request can hold a value:
    it refuses invalid UTF-8, lone surrogates, a byte-order mark and
    anything but strict JSON syntax, and a value it reads differently
    (``NaN``, ``1e400``) can only sit where no float is valid. So when it
    accepts a body, the careful path would have built the same request;
    whenever it refuses one (or the body names a release or a move), the
    careful path decides alone, so every error, and the task id it carries,
    is exactly the careful path's. ``tests/test_parse_paths.py`` holds the
    two to that on arbitrary bodies.
    """
    if len(body) <= MAX_BODY_BYTES and b'"release"' not in body and b'"move"' not in body:
        try:
            return SchedulingRequest.model_validate_json(body)
        except ValidationError:
            pass  # anything unusual: the careful path decides, and says why
    return parse_careful(body)


def parse_careful(body: bytes) -> SchedulingRequest | ReleaseRequest | MoveRequest:
    """:func:`parse_message` the careful way: every check in order, every error with its reason.

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
    readable_id = task_id if isinstance(task_id, str) and valid_task_id(task_id) else None
    if "release" in data and len(data) == 1:
        try:
            return ReleaseRequest.model_validate(data)
        except ValidationError as exc:
            raise BadMessage(format_validation_error(exc), None) from None
    if "move" in data and "task_id" not in data:
        # A move names no task_id field: a bad one is dead-lettered, never recorded as a failed task
        # (the task it names may be running; a typo in a move must not touch it).
        try:
            return MoveRequest.model_validate(data)
        except ValidationError as exc:
            raise BadMessage(f"move: {format_validation_error(exc)}", None) from None
    try:
        return SchedulingRequest.model_validate(data)
    except ValidationError as exc:
        raise BadMessage(format_validation_error(exc), readable_id) from None


def parse_json_line(line: str) -> SchedulingRequest | ReleaseRequest:
    """One line of a JSON-lines file (``submit --file``, ``simulate --requests``).

    Raises ValueError with ``field: rule`` text; the caller adds the line number.
    A plain request line is validated by pydantic's JSON parser at once (as in
    :func:`parse_message`); anything else, and every error, is the careful
    path's.
    """
    if '"release"' not in line:
        try:
            return SchedulingRequest.model_validate_json(line)
        except ValidationError:
            pass  # the careful path decides, and says why
    return _parse_json_line_careful(line)


def _parse_json_line_careful(line: str) -> SchedulingRequest | ReleaseRequest:
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


_TASK_ID_RE = re.compile(TASK_ID_PATTERN)


def valid_task_id(value: str) -> bool:
    """``value`` is a task id :data:`TaskId` accepts (for ids read outside a model: a raw body's, an
    AMQP ``message_id``)."""
    return _TASK_ID_RE.fullmatch(value) is not None


class BadMessage(Exception):
    """A message that can never be processed; ``task_id`` is set when it could be read."""

    def __init__(self, message: str, task_id: str | None, reason: Reason = Reason.INVALID_REQUEST):
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.reason = reason


class MoveRequest(_Strict):
    """``{"move": TASK_ID, "node": NAME}``: move a placed VM's allocation to another node (rebalancing)."""

    move: TaskId
    node: Name
