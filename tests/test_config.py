"""Configuration: env over file over defaults, and every bad value is one clear error naming its key.

Why: operators set the strategy through a ConfigMap (the file) and Helm
values (environment); which one wins must be predictable, and a typo must
stop the process at start-up with the key's name, not fail on first use
hours later. Every test starts from a clean environment and an empty
working directory, so the machine's own variables cannot leak in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.config import ENV_ALIASES, ConfigError, Settings, load_settings
from scheduler.strategies.registry import STRATEGY_NAMES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name in ENV_ALIASES or name.startswith("SCHEDULER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no ./config.yaml unless a test writes one
    yield


def write_config(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("SCHEDULER_CONFIG", str(path))
    return path


def config_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    # One clear error, not a chained traceback: no cause, and any context suppressed (``from None``).
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    return str(info.value)


def test_defaults_match_design() -> None:
    s = load_settings()
    assert s.strategy == "least_loaded"
    assert (s.strategy_weights.cpu, s.strategy_weights.memory, s.strategy_weights.disk) == (0.4, 0.4, 0.2)
    assert s.dedicated_nodes_exclusive is True
    assert str(s.amqp.url) == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert (s.amqp.exchange, s.amqp.queue, s.amqp.prefetch) == ("scheduler", "scheduling.requests", 256)
    assert s.database.url == "sqlite:///scheduler.db"
    assert (s.election.backend, s.election.lease_name) == ("auto", "virtflow-scheduler")
    assert (s.election.lease_duration, s.election.renew_deadline, s.election.retry_period) == (15, 10, 2)
    assert (s.retry.max_attempts, s.retry.initial_backoff, s.retry.max_backoff) == (5, 1, 60)
    assert (s.nodes.suspicious_after, s.nodes.offline_after) == (10, 20)
    assert (s.webhooks.urls, s.webhooks.secrets, s.webhooks.allow) == ([], [], [])
    assert s.webhooks.max_attempts == 10
    assert s.webhooks.allow_unsigned is False
    assert s.http.port == 8080


def test_default_config_yaml_in_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("strategy: memory\n", encoding="utf-8")
    assert load_settings().strategy == "memory"


def test_file_over_defaults_and_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(
        tmp_path,
        "strategy: best_fit\namqp:\n  exchange: from-file\n  prefetch: 10\nhttp:\n  port: 9000\n",
        monkeypatch,
    )
    s = load_settings()
    assert (s.strategy, s.amqp.exchange, s.amqp.prefetch, s.http.port) == ("best_fit", "from-file", 10, 9000)
    assert s.amqp.queue == "scheduling.requests"  # untouched keys keep their defaults

    monkeypatch.setenv("SCHEDULING_STRATEGY", "cpu")
    monkeypatch.setenv("SCHEDULER_AMQP__PREFETCH", "64")
    monkeypatch.setenv("HTTP_PORT", "9100")
    s = load_settings()
    assert (s.strategy, s.amqp.prefetch, s.http.port) == ("cpu", 64, 9100)
    # Env sets one nested key; its siblings from the file survive (a deep merge, not a replacement).
    assert s.amqp.exchange == "from-file"


def test_explicit_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULING_STRATEGY", "cpu")
    assert load_settings(strategy="random").strategy == "random"


@pytest.mark.parametrize(
    ("env", "value", "attr", "expected"),
    [
        ("AMQP_URL", "amqps://u:p@mq.internal:5671/vh", ("amqp", "url"), "amqps://u:p@mq.internal:5671/vh"),
        ("DATABASE_URL", "postgresql://u@db/sched", ("database", "url"), "postgresql://u@db/sched"),
        ("ELECTION_BACKEND", "database", ("election", "backend"), "database"),
        ("POD_NAME", "scheduler-0", ("identity",), "scheduler-0"),
        ("POD_NAMESPACE", "infra", ("election", "namespace"), "infra"),
        ("SCHEDULER_ELECTION__LEASE_NAME", "other-lease", ("election", "lease_name"), "other-lease"),
        ("SCHEDULER_DEDICATED_NODES_EXCLUSIVE", "false", ("dedicated_nodes_exclusive",), False),
    ],
)
def test_design_env_names_map_to_their_keys(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, attr: tuple[str, ...], expected: object
) -> None:
    monkeypatch.setenv(env, value)
    got: object = load_settings()
    for part in attr:
        got = getattr(got, part)
    assert (str(got) if env == "AMQP_URL" else got) == expected


def test_webhook_url_is_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_URL", " https://a.example.com/hook ,http://b.example.com:8080/x,, ")
    urls = [str(u) for u in load_settings().webhooks.urls]
    assert urls == ["https://a.example.com/hook", "http://b.example.com:8080/x"]


def test_webhook_url_with_a_bad_scheme_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_URL", "https://ok.example.com,ftp://bad.example.com/x")
    message = config_error()
    assert (
        "webhooks.urls" in message and "(env WEBHOOK_URL)" in message and "ftp://bad.example.com/x" in message
    )


def test_unknown_strategy_names_the_key_and_lists_valid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULING_STRATEGY", "fastest")
    message = config_error()
    assert "strategy (env SCHEDULING_STRATEGY): unknown strategy 'fastest'" in message
    assert all(name in message for name in STRATEGY_NAMES)


@pytest.mark.parametrize(("duration", "deadline"), [(10, 10), (10, 12)])
def test_renew_deadline_must_be_below_lease_duration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, duration: int, deadline: int
) -> None:
    write_config(
        tmp_path, f"election:\n  lease_duration: {duration}\n  renew_deadline: {deadline}\n", monkeypatch
    )
    message = config_error()
    assert message.startswith("invalid configuration: election:")
    assert re.search(
        rf"renew_deadline \({deadline}(\.0)?\) must be < lease_duration \({duration}(\.0)?\)", message
    )


def test_retry_period_must_be_below_renew_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_ELECTION__RETRY_PERIOD", "10")
    assert "retry_period (10.0) must be < renew_deadline" in config_error()


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("SCHEDULER_STRATEGY_WEIGHTS__CPU", "-0.1", "strategy_weights.cpu"),
        ("AMQP_URL", "not a url", "amqp.url (env AMQP_URL)"),
        ("AMQP_URL", "http://mq.example.com/", "amqp.url (env AMQP_URL): must be an amqp:// or amqps:// URL"),
        (
            "DATABASE_URL",
            "mysql://u@db/x",
            "database.url (env DATABASE_URL): only sqlite:// and postgresql://",
        ),
        ("DATABASE_URL", "::nonsense::", "database.url (env DATABASE_URL): not a database URL"),
        ("HTTP_PORT", "99999", "http.port (env HTTP_PORT)"),
        ("HTTP_PORT", "eighty", "http.port (env HTTP_PORT)"),
        ("ELECTION_BACKEND", "zookeeper", "election.backend (env ELECTION_BACKEND)"),
        ("SCHEDULER_AMQP__PREFETCH", "0", "amqp.prefetch"),
        ("SCHEDULER_AMQP__PREFETCH", "lots", "amqp.prefetch"),
        (
            "SCHEDULER_NODES__OFFLINE_AFTER",
            "5",
            "nodes: Value error, offline_after must be >= suspicious_after",
        ),
    ],
)
def test_bad_values_name_their_key(monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str) -> None:
    monkeypatch.setenv(env, value)
    message = config_error()
    assert message.startswith("invalid configuration: ")
    assert key.replace("Value error, ", "") in message


def test_all_zero_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, "strategy_weights: {cpu: 0, memory: 0, disk: 0}\n", monkeypatch)
    assert "strategy_weights: at least one weight must be positive" in config_error()


def test_unknown_keys_in_the_file_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, "amqp:\n  prefetchh: 3\n", monkeypatch)
    assert "amqp.prefetchh: Extra inputs are not permitted" in config_error()


@pytest.mark.parametrize(
    ("text", "words"),
    [("strategy: [unclosed\n", "is not valid YAML"), ("- a\n- b\n", "expected a mapping")],
)
def test_unreadable_files_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, words: str
) -> None:
    path = write_config(tmp_path, text, monkeypatch)
    message = config_error()
    assert str(path) in message and words in message


def test_yaml_errors_say_where_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Line and column of the problem, one line, no ``"<unicode string>"`` standing in for the file."""
    path = write_config(tmp_path, "amqp:\n  prefetch: 3\n strategy: best_fit\n", monkeypatch)
    message = config_error()
    assert message.startswith(f"config file {path} is not valid YAML: line 3, column ")
    assert "\n" not in message and "unicode string" not in message


@pytest.mark.parametrize(
    "nesting", ["[" * 100_000 + "]" * 100_000, "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 3000))]
)
def test_a_deeply_nested_config_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nesting: str
) -> None:
    """A RecursionError (a traceback at start-up) before the YAML parser refused nesting itself."""
    path = write_config(
        tmp_path, f"strategy: {nesting}\n" if nesting.startswith("[") else nesting, monkeypatch
    )
    message = config_error()
    assert str(path) in message and "nesting depth" in message


def test_a_deeply_nested_tokens_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_TOKENS", "[" * 100_000 + "]" * 100_000)
    assert "http.tokens (env HTTP_TOKENS): must be a JSON object" in config_error()


def test_a_config_path_without_end_is_refused_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """``/dev/zero`` was read until a MemoryError traceback."""
    monkeypatch.setenv("SCHEDULER_CONFIG", "/dev/zero")
    assert config_error() == "config file /dev/zero is larger than 16 MiB"


def test_missing_config_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_CONFIG", str(tmp_path / "nope.yaml"))
    message = config_error()
    assert "nope.yaml does not exist" in message and "SCHEDULER_CONFIG" in message


def test_empty_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, "", monkeypatch)
    assert load_settings() == load_settings(identity=load_settings().identity)


def test_settings_are_frozen() -> None:
    """Settings are read by several threads; a change means loading a new object, never mutating one."""
    s: Settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.strategy = "cpu"  # type: ignore[misc]
