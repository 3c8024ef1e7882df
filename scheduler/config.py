"""Configuration: ``config.yaml`` overridden by environment, over built-in defaults.

Precedence is env over file over defaults. The environment names of DESIGN.md
(``SCHEDULING_STRATEGY``, ``AMQP_URL``, ...) map onto nested keys; any other
key can be set as ``SCHEDULER_<SECTION>__<KEY>`` (for example
``SCHEDULER_AMQP__PREFETCH=64``), which is what tests and Helm use to set keys
that have no short name.

A bad value is one :class:`ConfigError` naming the key, raised at load time,
so the process refuses to start instead of failing later on first use.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from scheduler.strategies.registry import STRATEGY_NAMES

DEFAULT_CONFIG_PATH = "config.yaml"

# Short environment names of DESIGN.md and the nested key each one sets.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "SCHEDULING_STRATEGY": ("strategy",),
    "AMQP_URL": ("amqp", "url"),
    "DATABASE_URL": ("database", "url"),
    "ELECTION_BACKEND": ("election", "backend"),
    "POD_NAME": ("identity",),
    "POD_NAMESPACE": ("election", "namespace"),
    "WEBHOOK_URL": ("webhooks", "urls"),
    "WEBHOOK_SECRET": ("webhooks", "secret"),
    "HTTP_PORT": ("http", "port"),
    "LOG_LEVEL": ("logging", "level"),
}


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
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception:
            raise ValueError(
                "not a database URL (e.g. sqlite:///scheduler.db, postgresql://u@h/db)"
            ) from None
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
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
    urls: list[AnyUrl] = Field(default_factory=list)
    secret: str = Field(default="", repr=False)
    allow: list[str] = Field(default_factory=list)
    max_attempts: int = Field(default=10, ge=1, le=100)
    timeout: float = Field(default=5, gt=0, le=120, description="connect and read timeout, seconds")
    concurrency: int = Field(default=16, ge=1, le=1024)
    initial_backoff: float = Field(default=1, gt=0)
    max_backoff: float = Field(default=600, gt=0)

    @field_validator("urls", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("urls")
    @classmethod
    def _http_only(cls, urls: list[AnyUrl]) -> list[AnyUrl]:
        for url in urls:
            if url.scheme not in ("http", "https"):
                raise ValueError(f"{url}: webhook URLs must be http:// or https://")
        return urls


class HttpConfig(_Section):
    port: int = Field(default=8080, ge=0, le=65535)
    host: str = "0.0.0.0"
    enabled: bool = True


class WorkerConfig(_Section):
    commit_batch: int = Field(default=256, ge=1, le=10000, description="max messages per commit group")
    commit_interval_ms: float = Field(default=5, ge=0, le=10000, description="max wait to fill a group")
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
    """The short DESIGN.md environment names, mapped onto their nested keys."""

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


def read_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (SCHEDULER_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
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
