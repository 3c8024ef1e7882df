"""Standard Webhooks signatures, secrets and their configuration, retry schedule, URL display (no database).

Signatures are checked with the ``standardwebhooks`` package from PyPI, a
verifier this project did not write.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from scheduler.config import ConfigError, WebhooksConfig, load_settings
from scheduler.webhooks.attempt import strict_json_problem
from scheduler.webhooks.backoff import backoff_delay, nominal_delay, retry_schedule
from scheduler.webhooks.policy import display_url, scrub
from scheduler.webhooks.signing import (
    SecretFormatError,
    decode_secret,
    new_secret,
    signature,
    signed_headers,
    signing_keys,
    unsigned_refusal,
)

ROOT = Path(__file__).resolve().parent.parent
OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the key of the specification's examples
NEW = new_secret()
BODY = b'{"id":"e1","type":"task.scheduled","created_at":"2025-01-01T00:00:00Z","task":{"task_id":"t"}}'


def _load_example() -> Any:
    import importlib.util

    path = ROOT / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _headers(
    secrets: list[str], event_id: str = "e1", body: bytes = BODY, at: int | None = None
) -> dict[str, str]:
    keys = [decode_secret(s) for s in secrets]
    ts = int(time.time()) if at is None else at
    return signed_headers(keys, event_type="task.scheduled", event_id=event_id, body=body, timestamp=ts)


# ----------------------------------------------------------------- signatures


def test_signature_matches_the_reference_library_byte_for_byte() -> None:
    at = 1700000000
    ours = signature([decode_secret(OLD)], "msg_p5jXN8AQM9LWM0D4loKWxJek", at, BODY)
    theirs = Webhook(OLD).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(at, UTC), BODY.decode())
    assert ours == theirs
    key = base64.b64decode(OLD.removeprefix("whsec_"))
    mac = hmac.new(key, b"msg_p5jXN8AQM9LWM0D4loKWxJek.1700000000." + BODY, hashlib.sha256).digest()
    assert ours == "v1," + base64.b64encode(mac).decode()


def test_headers_are_the_standard_webhooks_names_and_verify() -> None:
    headers = _headers([OLD])
    assert set(headers) == {"Content-Type", "webhook-id", "webhook-timestamp", "webhook-signature",
                            "X-Scheduler-Event"}
    assert headers["webhook-id"] == "e1" and headers["X-Scheduler-Event"] == "task.scheduled"
    assert headers["webhook-signature"].startswith("v1,") and " " not in headers["webhook-signature"]
    assert Webhook(OLD).verify(BODY, headers) == {"id": "e1", "type": "task.scheduled",
                                                   "created_at": "2025-01-01T00:00:00Z",
                                                   "task": {"task_id": "t"}}


def test_during_a_rotation_both_secrets_verify_and_no_other_does() -> None:
    headers = _headers([OLD, NEW])
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(OLD).verify(BODY, headers)  # a receiver not yet switched
    Webhook(NEW).verify(BODY, headers)  # a receiver already switched
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


@pytest.mark.parametrize("change", ["body", "id", "timestamp", "old", "future", "unsigned"])
def test_tampered_stale_or_unsigned_deliveries_do_not_verify(change: str) -> None:
    now = int(time.time())
    headers = _headers([OLD], at=now - 400 if change == "old" else now + 400 if change == "future" else now)
    body = BODY
    if change == "body":
        body = BODY.replace(b"task.scheduled", b"task.released")
    elif change == "id":
        headers["webhook-id"] = "e2"
    elif change == "timestamp":  # a fresh timestamp on an old signature: the replay the window stops
        headers["webhook-timestamp"] = str(now + 1)
    elif change == "unsigned":
        headers = signed_headers([], event_type="task.scheduled", event_id="e1", body=BODY, timestamp=now)
        assert "webhook-signature" not in headers
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(body, headers)


@settings(max_examples=50, deadline=None)
@given(body=st.binary(max_size=2000).map(lambda b: b.decode("latin-1").encode()), event_id=st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
def test_any_body_and_id_verifies_with_the_reference_library(body: bytes, event_id: str) -> None:
    headers = _headers([NEW, OLD], event_id=event_id, body=body)
    Webhook(OLD).verify(body, headers, json_parse=False)
    Webhook(NEW).verify(body, headers, json_parse=False)


# ----------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("hunter2-not-prefixed-at-all", "must start with whsec_"),
        ("whsec_", "24..64 bytes, not 0"),
        ("whsec_c2hvcnQ=", "24..64 bytes, not 5"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "not 65"),
        ("whsec_not*base64!stuff#####", "not valid base64"),
    ],
)
def test_bad_secrets_are_refused_without_echoing_them(secret: str, reason: str) -> None:
    with pytest.raises(SecretFormatError) as caught:
        decode_secret(secret)
    assert reason in str(caught.value)
    body = secret.removeprefix("whsec_")
    assert not body or body not in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_new_secrets_are_valid_and_distinct() -> None:
    made = {new_secret() for _ in range(20)}
    assert len(made) == 20
    assert all(len(decode_secret(s).key) == 32 for s in made)
    assert "key" not in repr(decode_secret(NEW)) or "***" in repr(decode_secret(NEW))
    assert NEW.removeprefix("whsec_") not in repr(decode_secret(NEW))


def test_webhook_secret_env_is_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEBHOOK_SECRET", f" {NEW} ,{OLD},, ")
    webhooks = load_settings().webhooks
    assert webhooks.all_secrets() == [NEW, OLD]
    assert [k.key for k in signing_keys(webhooks)] == [decode_secret(NEW).key, decode_secret(OLD).key]
    for shown in (repr(webhooks), str(webhooks), webhooks.model_dump_json()):
        assert NEW.removeprefix("whsec_") not in shown and OLD.removeprefix("whsec_") not in shown


def test_the_older_single_secret_key_still_counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(f"webhooks:\n  secret: {OLD}\n", encoding="utf-8")
    assert load_settings().webhooks.all_secrets() == [OLD]
    monkeypatch.setenv("WEBHOOK_SECRET", NEW)  # both: each delivery is signed with both
    assert load_settings().webhooks.all_secrets() == [NEW, OLD]


@pytest.mark.parametrize("key", ["secrets", "secret"])
def test_a_bad_secret_in_config_names_the_field_never_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str
) -> None:
    monkeypatch.chdir(tmp_path)
    value = "[hunter2-s3cret]" if key == "secrets" else "hunter2-s3cret"
    (tmp_path / "config.yaml").write_text(f"webhooks:\n  {key}: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"webhooks.{key}" in message and "whsec_" in message
    assert "hunter2" not in message


def test_a_webhook_url_with_a_bad_scheme_does_not_print_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEBHOOK_URL", "ftp://bot:hunter2@hooks.example.com/x?token=tok-123")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "webhooks.urls" in message and "(env WEBHOOK_URL)" in message and "http:// or https://" in message
    assert "hunter2" not in message and "tok-123" not in message


def test_unsigned_delivery_needs_allow_unsigned() -> None:
    assert unsigned_refusal(WebhooksConfig()) is None  # no target: nothing is ever sent
    refused = unsigned_refusal(WebhooksConfig.model_validate({"urls": ["https://hooks.example.com/x"]}))
    assert refused is not None and "webhooks.secrets" in refused and "allow_unsigned" in refused
    callbacks_only = WebhooksConfig.model_validate({"allow": ["https://hooks.example.com/*"]})
    assert unsigned_refusal(callbacks_only) is not None
    explicit = WebhooksConfig.model_validate(
        {"urls": ["https://hooks.example.com/x"], "allow_unsigned": True}
    )
    assert unsigned_refusal(explicit) is None
    signed = WebhooksConfig.model_validate({"urls": ["https://hooks.example.com/x"], "secrets": [NEW]})
    assert unsigned_refusal(signed) is None


def test_the_worker_refuses_to_start_unsigned_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("{}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "WEBHOOK_"))}
    env.update({"SCHEDULER_CONFIG": str(tmp_path / "config.yaml"), "WEBHOOK_URL": "https://hooks.example.com/x",
                "DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}"})
    out = subprocess.run([sys.executable, "-m", "scheduler", "worker"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: webhooks.secrets") and "allow_unsigned" in lines[0]
    assert not (tmp_path / "never.db").exists(), "it refused before touching anything"


# ----------------------------------------------------------------- the example receiver


def test_example_receiver_verifies_with_the_standard_library() -> None:
    example = _load_example()
    verifiers = [Webhook(OLD), Webhook(NEW)]
    headers = {k.lower(): v for k, v in _headers([NEW]).items()}
    assert example.check_signature(verifiers, headers, BODY) is None  # rotation: any one verifies
    assert example.check_signature([Webhook(OLD)], headers, BODY) is not None
    assert example.check_signature(verifiers, headers, BODY + b" ") is not None
    stale = {k.lower(): v for k, v in _headers([OLD], at=int(time.time()) - 400).items()}
    assert "too old" in example.check_signature(verifiers, stale, BODY)
    assert example.check_signature(verifiers, {}, BODY) is not None


# ----------------------------------------------------------------- strict JSON


@pytest.mark.parametrize(
    ("payload", "ok"),
    [
        ('{"a": 1.5, "b": [1e308, -0.0], "c": "\\ud83d\\ude00"}', True),
        ('{"a": NaN}', False),
        ('{"a": Infinity}', False),
        ('{"a": [-Infinity]}', False),
        ('{"a": "\\ud800"}', False),  # an escaped lone surrogate
        ('{"a": "\ud800"}', False),  # a raw one
        ('{"a": 1', False),
        ("", False),
    ],
)
def test_only_strict_json_passes(payload: str, ok: bool) -> None:
    assert (strict_json_problem(payload) is None) is ok


# ----------------------------------------------------------------- retry schedule


def test_backoff_doubles_up_to_the_cap_with_equal_jitter() -> None:
    assert [nominal_delay(n, 1, 600) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600]
    assert nominal_delay(10_000, 1, 600) == 600
    rng = random.Random(7)
    for n in range(1, 15):
        nominal = nominal_delay(n, 0.5, 30)
        for _ in range(50):
            assert nominal / 2 <= backoff_delay(n, 0.5, 30, rng) <= nominal


def test_retry_schedule_of_the_default_config() -> None:
    steps = retry_schedule(WebhooksConfig())
    assert len(steps) == 9  # 10 attempts: 9 waits, then dead
    assert [s.nominal for s in steps] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert steps[-1].elapsed_high == 511 and steps[-1].elapsed_low == 255.5


# ----------------------------------------------------------------- URLs in logs and errors


def test_display_url_hides_userinfo_query_values_and_fragment() -> None:
    assert display_url("https://bot:hunter2@hooks.example.com/x?token=abc&team=7#sig") == (
        "https://***@hooks.example.com/x?token=***&team=***#***"
    )
    assert display_url("https://ghp_tokenonly@hooks.example.com/x") == "https://***@hooks.example.com/x"
    assert display_url("https://hooks.example.com/x") == "https://hooks.example.com/x"
    assert "hunter2" not in display_url("http://u:hunter2@[::1/bad")
    url = "https://bot:hunter2@h.example/x?k=abcdef"
    assert scrub(f"POST {url} failed: abcdef", url) == "POST https://***@h.example/x?k=*** failed: ***"


_SECRETISH = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789!$&'()*+,;=%-._~", min_size=6, max_size=30)


@settings(max_examples=200, deadline=None)
@given(user=_SECRETISH, password=_SECRETISH, token=_SECRETISH,
       host=st.from_regex(r"[a-z]{1,10}\.example", fullmatch=True), path=st.from_regex(r"(/[a-z]{0,8}){0,3}",
                                                                                     fullmatch=True))
def test_no_credential_survives_display(user: str, password: str, token: str, host: str, path: str) -> None:
    url = f"https://{user}:{password}@{host}{path}?token={token}"
    shown = display_url(url)
    for secret in (password, token, f"{user}:"):
        assert secret not in shown


def test_new_secret_command_prints_a_usable_secret() -> None:
    from click.testing import CliRunner

    from scheduler.cli import cli

    out = CliRunner().invoke(cli, ["webhooks", "new-secret"])
    assert out.exit_code == 0, out.output
    secret = out.output.strip()
    assert len(decode_secret(secret).key) == 32
    headers = _headers([secret])
    Webhook(secret).verify(BODY, headers)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


def _has_non_finite(value: object) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False


@settings(max_examples=300, deadline=None)
@given(value=_JSON, ascii_only=st.booleans())
def test_a_payload_is_refused_exactly_when_it_holds_nan_or_infinity(value: object, ascii_only: bool) -> None:
    import json

    payload = json.dumps(value, ensure_ascii=ascii_only)  # allow_nan=True: what a careless writer emits
    assert (strict_json_problem(payload) is not None) is _has_non_finite(value)


def test_the_example_receiver_prints_each_event_on_a_line_of_its_own() -> None:
    """Deliveries are handled on several threads: two events once shared a line (``print`` writes the
    newline apart), and the demo's count of lines came out one short."""
    example = str(ROOT / "examples" / "webhook_receiver.py")
    code = (
        "import importlib.util, sys, threading\n"
        f"spec = importlib.util.spec_from_file_location('r', {example!r})\n"
        "r = importlib.util.module_from_spec(spec); spec.loader.exec_module(r)\n"
        "emit = r.event_printer()\n"
        "def burst(k):\n"
        "    for i in range(300):\n"
        "        task = {'task_id': f't{k}-{i}', 'node': {'name': 'n'}}\n"
        "        emit('task.scheduled', {'id': f'{k}-{i}', 'task': task})\n"
        "threads = [threading.Thread(target=burst, args=(k,)) for k in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    lines = out.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 8 * 300 + 1
    assert sorted(json.loads(line)["id"] for line in lines[:-1]) == sorted(
        f"{k}-{i}" for k in range(8) for i in range(300)
    )
