"""Configuration: ``config.yaml`` overridden by environment, over built-in defaults.

Precedence is env over file over defaults. The environment names of docs/contracts.md
(``SCHEDULING_STRATEGY``, ``AMQP_URL``, ...) map onto nested keys; any other
key can be set as ``SCHEDULER_<SECTION>__<KEY>`` (for example
``SCHEDULER_AMQP__PREFETCH=64``), which is what tests and Helm use to set keys
that have no short name.

A bad value is one :class:`ConfigError` naming the key, raised at load time,
so the process refuses to start instead of failing later on first use.
"""

from __future__ import annotations

import json
import os
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from scheduler.strategies.registry import STRATEGY_NAMES

if TYPE_CHECKING:
    from scheduler.fleet import CapacityDefaults

DEFAULT_CONFIG_PATH = "config.yaml"

# Short environment names of docs/contracts.md and the nested key each one sets.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "SCHEDULING_STRATEGY": ("strategy",),
    "AMQP_URL": ("amqp", "url"),
    "DATABASE_URL": ("database", "url"),
    "ELECTION_BACKEND": ("election", "backend"),
    "POD_NAME": ("identity",),
    "POD_NAMESPACE": ("election", "namespace"),
    "WEBHOOK_URL": ("webhooks", "urls"),
    "WEBHOOK_SECRET": ("webhooks", "secrets"),
    "HTTP_PORT": ("http", "port"),
    "HTTP_TOKENS": ("http", "tokens"),
    "METRICS_PORT": ("http", "metrics_port"),
    "LOG_LEVEL": ("logging", "level"),
}


# The grammar of sqlalchemy.engine.url.make_url: backend[+driver]://[user[:pw]@][host][:port][/db][?query]
_DB_URL = re.compile(
    r"(?P<name>[\w+]+)://(?:[^:/]*(?::[^@]*)?@)?(?:(?:\[[^/?]+\]|[^/:?]+)?(?::(?P<port>[^/?]*))?)?"
    r"(?:/[^?]*)?(?:\?.*)?\Z",
    re.DOTALL,
)


class ConfigError(Exception):
    """A configuration problem, worded for the operator: which key, what is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategyWeights(_Section):
    cpu: float = Field(default=0.4, ge=0)
    memory: float = Field(default=0.4, ge=0)
    disk: float = Field(default=0.2, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> StrategyWeights:
        if self.cpu + self.memory + self.disk <= 0:
            raise ValueError("at least one weight must be positive")
        return self


class AllocationRatios(_Section):
    """Node defaults of Nova's ``*_allocation_ratio``: effective = floor((capacity - reserved) x ratio)."""

    cpu: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False)
    memory: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False)
    disk: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False)


class ReservedDefaults(_Section):
    """What every node keeps for its host unless it says otherwise (vCPUs, MiB, GiB)."""

    cpu: int = Field(default=0, ge=0)
    memory: int = Field(default=0, ge=0)
    disk: int = Field(default=0, ge=0)


class AmqpConfig(_Section):
    url: AnyUrl = AnyUrl("amqp://guest:guest@127.0.0.1:5672/%2F")
    exchange: str = Field(default="scheduler", min_length=1, max_length=200)
    queue: str = Field(default="scheduling.requests", min_length=1, max_length=200)
    prefetch: int = Field(default=256, ge=1, le=65535)
    queue_type: Literal["classic", "quorum"] = "classic"
    heartbeat: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description="AMQP heartbeat seconds; default and maximum a third of election.lease_duration",
    )
    dead_letter_max_length: int = Field(default=100_000, ge=1, description="x-max-length of <queue>.dead")
    dead_letter_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="x-max-length-bytes of <queue>.dead"
    )
    dead_letter_max_body: int = Field(
        default=64 * 1024, ge=256, le=16 * 1024 * 1024, description="bodies beyond this are dead-lettered cut"
    )

    @field_validator("url")
    @classmethod
    def _amqp_scheme(cls, url: AnyUrl) -> AnyUrl:
        if url.scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return url


class DatabaseConfig(_Section):
    url: str = "sqlite:///scheduler.db"
    migrate_on_start: bool = True

    @field_validator("url")
    @classmethod
    def _known_backend(cls, url: str) -> str:
        # SQLAlchemy's own URL grammar, checked without importing SQLAlchemy:
        # every CLI command loads the settings, and most never touch a database.
        match = _DB_URL.match(url)
        if match is None or (match["port"] and not match["port"].isdigit()):
            raise ValueError("not a database URL (e.g. sqlite:///scheduler.db, postgresql://u@h/db)")
        if match["name"].split("+", 1)[0] not in ("sqlite", "postgresql"):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        return url


class ElectionConfig(_Section):
    backend: Literal["auto", "kubernetes", "database", "none"] = "auto"
    lease_name: str = Field(default="virtflow-scheduler", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    namespace: str | None = None
    lease_duration: float = Field(default=15, gt=0)
    renew_deadline: float = Field(default=10, gt=0)
    retry_period: float = Field(default=2, gt=0)

    @model_validator(mode="after")
    def _ordering(self) -> ElectionConfig:
        # client-go's rule: the leader must give up (renew_deadline) strictly
        # before anyone else may take over (lease_duration), and must retry
        # more than once inside its deadline.
        if not self.renew_deadline < self.lease_duration:
            raise ValueError(
                f"renew_deadline ({self.renew_deadline}) must be < lease_duration ({self.lease_duration})"
            )
        if not self.retry_period < self.renew_deadline:
            raise ValueError(
                f"retry_period ({self.retry_period}) must be < renew_deadline ({self.renew_deadline})"
            )
        return self


class RetryConfig(_Section):
    max_attempts: int = Field(default=5, ge=1, le=1000)
    initial_backoff: float = Field(default=1, gt=0, le=3600)
    max_backoff: float = Field(default=60, gt=0, le=86400)

    @model_validator(mode="after")
    def _ordering(self) -> RetryConfig:
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must be >= initial_backoff")
        return self


class NodesConfig(_Section):
    suspicious_after: float = Field(default=10, gt=0)
    offline_after: float = Field(default=20, gt=0)

    @model_validator(mode="after")
    def _ordering(self) -> NodesConfig:
        if self.offline_after < self.suspicious_after:
            raise ValueError("offline_after must be >= suspicious_after")
        return self


class WebhooksConfig(_Section):
    """Deliveries of webhook events; see ``docs/webhooks.md``.

    ``secrets`` are ``whsec_<base64>`` Standard Webhooks secrets (several at
    once during a rotation; env ``WEBHOOK_SECRET``, comma separated); the
    older single ``secret`` key is still read and counts as one more.
    Secrets are :class:`~pydantic.SecretStr`: no repr, dump or error message
    shows them. With delivery targets (``urls`` or ``allow``) but no secret,
    the worker refuses to start unless ``allow_unsigned`` is true
    (:func:`scheduler.webhooks.signing.unsigned_refusal`); other commands,
    which send nothing, do not care.
    """

    urls: list[AnyUrl] = Field(default_factory=list)
    secrets: list[SecretStr] = Field(default_factory=list, repr=False)
    secret: SecretStr | None = Field(default=None, repr=False, description="older single-secret key")
    allow_unsigned: bool = False
    allow: list[str] = Field(default_factory=list)
    max_attempts: int = Field(default=10, ge=1, le=100)
    timeout: float = Field(
        default=5, gt=0, le=120, description="seconds for a whole attempt: resolve, connect, send, read"
    )
    concurrency: int = Field(default=16, ge=1, le=1024)
    per_destination: int = Field(
        default=8, ge=1, le=1024, description="attempts in flight to one scheme://host:port at most"
    )
    # At most a day: a retry scheduled past year 9999 (max_backoff 1e12 after ~40 attempts) raised
    # OverflowError, and the dispatcher's fallback retried the delivery every initial_backoff instead.
    initial_backoff: float = Field(default=1, gt=0, le=86400)
    max_backoff: float = Field(default=600, gt=0, le=86400)

    @field_validator("urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("secrets", mode="before")
    @classmethod
    def _secrets_comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        if isinstance(value, SecretStr):
            return [value]
        return value

    @field_validator("urls")
    @classmethod
    def _http_only(cls, urls: list[AnyUrl]) -> list[AnyUrl]:
        from scheduler.webhooks.policy import display_url

        for url in urls:
            if url.scheme not in ("http", "https"):
                raise ValueError(f"{display_url(str(url))}: webhook URLs must be http:// or https://")
        return urls

    @field_validator("secrets")
    @classmethod
    def _whsec_format(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        from scheduler.webhooks.signing import SecretFormatError, decode_secret

        for index, secret in enumerate(secrets):
            try:
                decode_secret(secret.get_secret_value())
            except SecretFormatError as exc:
                raise ValueError(f"secret #{index + 1}: {exc}") from None
        return secrets

    @field_validator("secret")
    @classmethod
    def _legacy_whsec_format(cls, secret: SecretStr | None) -> SecretStr | None:
        from scheduler.webhooks.signing import SecretFormatError, decode_secret

        if secret is None or not secret.get_secret_value():
            return None
        try:
            decode_secret(secret.get_secret_value())
        except SecretFormatError as exc:
            raise ValueError(str(exc)) from None
        return secret

    @field_validator("allow")
    @classmethod
    def _patterns(cls, allow: list[str]) -> list[str]:
        from scheduler.webhooks.policy import parse_pattern

        for text in allow:
            parse_pattern(text)  # ValueError names the pattern and what is wrong
        return allow

    def all_secrets(self) -> list[str]:
        """``secrets`` then the older ``secret``, without duplicates (the values; never log them)."""
        values = [s.get_secret_value() for s in self.secrets]
        if self.secret is not None and self.secret.get_secret_value():
            values.append(self.secret.get_secret_value())
        return list(dict.fromkeys(v.strip() for v in values))


class Role(StrEnum):
    """What a bearer token may do; each role includes the ones before it."""

    READ = "read"  # GETs and the dashboard
    SUBMIT = "submit"  # + POST /schedule, POST /plan
    ADMIN = "admin"  # + operations

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]


_ROLE_RANK = {Role.READ: 1, Role.SUBMIT: 2, Role.ADMIN: 3}
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")
DEFAULT_RATE_LIMIT = "20/second;600/minute"


class HttpConfig(_Section):
    port: int = Field(default=8080, ge=0, le=65535)
    host: str = "0.0.0.0"
    enabled: bool = True
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="/metrics, /healthz and /readyz only, no API route"
    )
    metrics_host: str = "0.0.0.0"
    tokens: dict[str, Role] = Field(
        default_factory=dict, repr=False, description="bearer token -> role (read, submit, admin)"
    )
    keep_alive_timeout: float = Field(
        default=5, gt=0, le=3600, description="an idle connection is closed after this many seconds"
    )
    header_timeout: float = Field(
        default=10, gt=0, le=3600, description="seconds for a request's line and headers to arrive"
    )
    body_timeout: float = Field(
        default=30, gt=0, le=3600, description="seconds for a request body to arrive once its headers did"
    )
    send_timeout: float = Field(
        default=30,
        gt=0,
        le=3600,
        description="seconds a response may wait for a client that reads none of it",
    )
    max_connections: int = Field(default=256, ge=1, le=100_000, description="open connections per port")
    rate_limit: str = Field(
        default=DEFAULT_RATE_LIMIT,
        description="per token, on POST /schedule and POST /plan (limits notation, ';' between several)",
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens_from_json(cls, value: Any) -> Any:
        """``HTTP_TOKENS`` arrives as a JSON object string; say so without echoing it (it is a secret)."""
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise ValueError(
                    'must be a JSON object of token to role, e.g. {"<token>": "read"} (value not shown)'
                ) from None
        if isinstance(value, dict):
            # Checked here, not by pydantic, whose error would name the offending token in its path.
            roles = [r.value for r in Role]
            for index, (token, role) in enumerate(value.items()):
                if not isinstance(token, str) or role not in roles:
                    raise ValueError(
                        f"token #{index + 1} (value not shown): role must be one of {', '.join(roles)}"
                    )
        return value

    @field_validator("tokens")
    @classmethod
    def _token_shape(cls, tokens: dict[str, Role]) -> dict[str, Role]:
        for index, token in enumerate(tokens):
            if not TOKEN_PATTERN.match(token):
                raise ValueError(
                    f"token #{index + 1} (value not shown): 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -"
                )
        return tokens

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_notation(cls, value: str) -> str:
        """Refuse what ``limits`` cannot parse; the default is known to parse (a test checks it).

        Importing ``limits`` costs about 45 ms (it loads its storage back ends, asyncio ones
        included), which every CLI command would pay at start-up: only a value other than the
        default is worth that.
        """
        if value == DEFAULT_RATE_LIMIT:
            return value
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate limit such as '20/second' or '20/second;600/minute'"
            ) from None
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> HttpConfig:
        if self.port and self.port == self.metrics_port:
            raise ValueError(
                f"metrics_port ({self.metrics_port}) must differ from port: it serves no API route"
            )
        return self


class WorkerConfig(_Section):
    commit_batch: int = Field(default=256, ge=1, le=10000, description="max messages per commit group")
    commit_interval_ms: float = Field(default=2, ge=0, le=10000, description="max wait to fill a group")
    inventory_poll_interval: float = Field(default=2, gt=0, le=3600)
    config_watch_interval: float = Field(default=2, gt=0, le=3600)
    reconnect_max_backoff: float = Field(default=5, gt=0, le=3600)
    reconnect_initial_backoff: float = Field(default=0.5, gt=0, le=60)
    healthy_session: float = Field(
        default=10, gt=0, le=3600, description="a broker session this long resets the reconnect backoff"
    )
    startup_timeout: float = Field(
        default=120, ge=0, le=86400, description="how long start-up waits for the broker and database"
    )
    max_redeliveries: int = Field(
        default=20, ge=1, le=100_000, description="a message delivered more often is dead-lettered"
    )
    max_group_retries: int = Field(
        default=3, ge=0, le=100_000, description="/readyz fails once a group was requeued more often"
    )
    commit_stuck_after: float = Field(
        default=30, gt=0, le=3600, description="/readyz fails while one commit runs longer than this"
    )


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    """The whole configuration; see ``config.yaml`` for every key, documented."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix="SCHEDULER_",
        env_nested_delimiter="__",
    )

    strategy: str = "least_loaded"
    strategy_weights: StrategyWeights = StrategyWeights()
    dedicated_nodes_exclusive: bool = True
    allocation_ratios: AllocationRatios = AllocationRatios()
    reserved: ReservedDefaults = ReservedDefaults()
    spread_max_skew: int = Field(default=1, ge=1, le=1_000_000)
    random_seed: int = Field(default=0, ge=0, le=2**63 - 1)
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", min_length=1)
    amqp: AmqpConfig = AmqpConfig()
    database: DatabaseConfig = DatabaseConfig()
    election: ElectionConfig = ElectionConfig()
    retry: RetryConfig = RetryConfig()
    nodes: NodesConfig = NodesConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    http: HttpConfig = HttpConfig()
    worker: WorkerConfig = WorkerConfig()
    logging: LoggingConfig = LoggingConfig()

    def broker_heartbeat(self) -> int:
        """The AMQP heartbeat the worker asks for: at most a third of the lease (see below).

        Why: a leader that freezes (SIGSTOP, a stalled VM) keeps its
        single-active-consumer slot until the broker drops its connection,
        about two heartbeat intervals later; the new leader consumes only
        after that. With the heartbeat at most a third of
        ``election.lease_duration``, that happens before the lease has even
        expired. ``amqp.heartbeat`` above that bound is lowered to it
        (:meth:`heartbeat_lowered` says so, for a start-up warning).
        """
        bound = max_heartbeat(self.election.lease_duration)
        return min(self.amqp.heartbeat, bound) if self.amqp.heartbeat else bound

    def heartbeat_lowered(self) -> bool:
        """True when the configured ``amqp.heartbeat`` was too slow for the lease and is lowered."""
        return self.amqp.heartbeat is not None and self.amqp.heartbeat > self.broker_heartbeat()

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        if name not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGY_NAMES)}")
        return name

    def capacity_defaults(self) -> CapacityDefaults:
        """``allocation_ratios`` and ``reserved`` as the fleet view takes them."""
        from scheduler.fleet import CapacityDefaults

        r, k = self.allocation_ratios, self.reserved
        return CapacityDefaults(r.cpu, r.memory, r.disk, k.cpu, k.memory, k.disk)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _AliasEnvSource(settings_cls), env_settings, _YamlSource(settings_cls))


def max_heartbeat(lease_duration: float) -> int:
    """The slowest AMQP heartbeat (whole seconds) that lets a new leader consume within the lease + 5 s."""
    return max(1, int(lease_duration // 3))


class _AliasEnvSource(PydanticBaseSettingsSource):
    """The short docs/contracts.md environment names, mapped onto their nested keys."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for env, path in ENV_ALIASES.items():
            value = os.environ.get(env)
            if value is None or value == "":
                continue
            node = out
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        return out


class _YamlSource(PydanticBaseSettingsSource):
    """``config.yaml`` (path from ``SCHEDULER_CONFIG``); a missing default file is fine."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return read_config_file(config_path())


def config_path() -> Path | None:
    """The config file to read: ``SCHEDULER_CONFIG``, else ./config.yaml if it exists."""
    explicit = os.environ.get("SCHEDULER_CONFIG")
    if explicit:
        return Path(explicit)
    default = Path(DEFAULT_CONFIG_PATH)
    return default if default.is_file() else None


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when PyYAML was built with it; errors in one line.

    Why libyaml: it parses a config or a fleet file about ten times faster
    (4.8 ms -> 0.4 ms for the sample config.yaml, on every CLI command), and
    it refuses nesting deeper than 1,000 levels with a ``YAMLError`` where
    the pure-Python parser recursed until ``RecursionError`` (a traceback
    instead of an error naming the file); a ``RecursionError`` from the
    fallback is made a ``YAMLError`` too. The constructor is the safe one
    either way. The error says where (``line 3, column 7``) and what, in one
    line: PyYAML's own text spans several and names the input
    ``"<unicode string>"``, which tells the reader nothing.
    """
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise yaml.YAMLError(where + " ".join(what.split())) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, before any parsing
        first = str(exc).split("\n", 1)[0]
        raise yaml.YAMLError(f"character {exc.position + 1}: {first}") from None


MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""The largest config file read (the sample is 7 KB). Why a bound: ``SCHEDULER_CONFIG=/dev/zero``
(or a log file given by mistake) grew the process until a ``MemoryError`` traceback."""


def read_at_most(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it holds more than ``limit`` (read no further than that).

    Why: a path that is not the file meant (``/dev/zero``, a multi-gigabyte
    log) was read until the process ran out of memory. Raises ``OSError``.
    """
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    return None if len(data) > limit else data


def read_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = read_at_most(path, MAX_CONFIG_BYTES)
        if data is None:
            raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024 // 1024} MiB")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (SCHEDULER_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 (byte at offset {exc.start})") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top level")
    return data


def load_settings(**overrides: Any) -> Settings:
    """Load and validate the configuration, or raise one :class:`ConfigError` naming the key."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_config_error(exc)) from None


def describe_config_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or True)
        msg = err["msg"].removeprefix("Value error, ")
        env = next((e for e, path in ENV_ALIASES.items() if ".".join(path) == key), None)
        where = f" (env {env})" if env and os.environ.get(env) else ""
        lines.append(f"{key}{where}: {msg}")
    return "invalid configuration: " + "; ".join(lines)


def redact_url(url: str) -> str:
    """A URL with its password replaced, for error messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if parsed.password:
            return parsed.render_as_string(hide_password=True)
        return url
    except Exception:
        import re

        return re.sub(r"(//[^:/@]+:)[^@]+@", r"\1***@", url)
