"""Webhook signatures, the retry schedule, URL display and the callback address policy (no database)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import random
import time
from pathlib import Path

import httpx
import pytest

from scheduler.config import WebhooksConfig
from scheduler.webhooks.backoff import backoff_delay, nominal_delay, retry_schedule
from scheduler.webhooks.policy import address_refusal, callback_refusal, display_url, literal_address
from scheduler.webhooks.signing import SignatureError, signature, signed_headers, verify
from scheduler.webhooks.transport import make_client, refused_address

SECRET = "whsec-test"
BODY = b'{"id":"e1","type":"task.scheduled","created_at":"2025-01-01T00:00:00Z","task":{"task_id":"t"}}'


def _load_example() -> object:
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------- signatures


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, BODY) == f"sha256={expected}"


def test_signed_headers_carry_the_design_md_names() -> None:
    headers = signed_headers(SECRET, event_type="task.failed", delivery_id="e1", body=BODY,
                             timestamp=1700000000)
    assert headers == {
        "Content-Type": "application/json",
        "X-Scheduler-Event": "task.failed",
        "X-Scheduler-Delivery": "e1",
        "X-Scheduler-Timestamp": "1700000000",
        "X-Scheduler-Signature": signature(SECRET, 1700000000, BODY),
    }
    unsigned = signed_headers("", event_type="task.failed", delivery_id="e1", body=BODY, timestamp=1)
    assert "X-Scheduler-Signature" not in unsigned


def test_verify_accepts_fresh_authentic_requests_case_insensitively() -> None:
    now = 1700000000
    headers = signed_headers(SECRET, event_type="task.scheduled", delivery_id="e1", body=BODY, timestamp=now)
    assert verify(SECRET, headers, BODY, now=now + 299) == now
    lowered = [(k.lower(), v) for k, v in headers.items()]
    assert verify(SECRET, lowered, BODY, now=now - 10) == now
    # During a secret rotation either secret verifies.
    assert verify(["new-secret", SECRET], headers, BODY, now=now) == now


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("body", "does not match"),
        ("old", "old"),
        ("future", "in the future"),
        ("secret", "does not match"),
        ("no-signature", "missing X-Scheduler-Signature"),
        ("no-timestamp", "missing X-Scheduler-Timestamp"),
        ("bad-timestamp", "not an integer"),
        ("other-scheme", "no sha256="),
        ("timestamp-swapped", "does not match"),
    ],
)
def test_verify_refuses_tampered_stale_or_unsigned_requests(change: str, reason: str) -> None:
    now = 1700000000
    body = BODY
    headers = signed_headers(SECRET, event_type="task.scheduled", delivery_id="e1", body=BODY, timestamp=now)
    secret = SECRET
    at = float(now)
    if change == "body":
        body = BODY.replace(b"task.scheduled", b"task.released")
    elif change == "old":
        at = now + 301
    elif change == "future":
        at = now - 301
    elif change == "secret":
        secret = "guessed"
    elif change == "no-signature":
        del headers["X-Scheduler-Signature"]
    elif change == "no-timestamp":
        del headers["X-Scheduler-Timestamp"]
    elif change == "bad-timestamp":
        headers["X-Scheduler-Timestamp"] = "yesterday"
    elif change == "other-scheme":
        headers["X-Scheduler-Signature"] = "md5=abc"
    elif change == "timestamp-swapped":  # a fresh timestamp on an old signature: the replay the window stops
        headers["X-Scheduler-Timestamp"] = str(now + 1000)
        at = now + 1000
    with pytest.raises(SignatureError, match=reason):
        verify(secret, headers, body, now=at)


def test_example_receiver_checks_the_same_way() -> None:
    example = _load_example()
    check = example.check_signature  # type: ignore[attr-defined]
    now = int(time.time())
    sig = signature(SECRET, now, BODY)
    assert check(SECRET, str(now), sig, BODY, now) is None
    assert "mismatch" in check(SECRET, str(now), sig, BODY + b" ", now)
    assert "window" in check(SECRET, str(now - 301), signature(SECRET, now - 301, BODY), BODY, now)
    assert "missing" in check(SECRET, None, sig, BODY, now)


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


# ----------------------------------------------------------------- URLs and addresses


def test_display_url_hides_credentials() -> None:
    assert display_url("https://bot:hunter2@hooks.example.com/x?token=abc&team=7") == (
        "https://bot:***@hooks.example.com/x?token=***&team=7"
    )
    assert display_url("https://hooks.example.com/x") == "https://hooks.example.com/x"
    assert "hunter2" not in display_url("http://u:hunter2@[::1/bad")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",  # 169.254.169.254 as one decimal number
        "http://0xa9fea9fe/",  # ... in hex
        "http://[::ffff:169.254.169.254]/",  # ... mapped into IPv6
        "http://[64:ff9b::a9fe:a9fe]/",  # ... through NAT64
        "http://[fe80::1]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./",
        "http://100.100.100.200/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:8080/",
        "http://224.0.0.1/",
    ],
)
def test_metadata_and_link_local_callbacks_are_refused_whatever_the_allow_list(url: str) -> None:
    refusal = callback_refusal(url, ["*"])
    assert refusal is not None and ("metadata" in refusal or "link-local" in refusal or "reserved" in refusal)


def test_allow_list_decides_for_other_callbacks() -> None:
    allow = ["https://hooks.example.com/*", "http://127.0.0.1:*/ok/*"]
    assert callback_refusal("https://hooks.example.com/vm/1", allow) is None
    assert callback_refusal("http://127.0.0.1:9000/ok/1", allow) is None
    assert "matches no pattern" in (callback_refusal("https://evil.example/hooks", allow) or "")
    assert "webhooks.allow is empty" in (callback_refusal("https://hooks.example.com/vm", []) or "")
    assert "http:// or https://" in (callback_refusal("ftp://hooks.example.com/x", ["*"]) or "")


def test_literal_addresses_include_the_forms_resolvers_accept() -> None:
    assert literal_address("2852039166") == ipaddress.ip_address("169.254.169.254")
    assert literal_address("[::1]") == ipaddress.ip_address("::1")
    assert literal_address("hooks.example.com") is None
    assert address_refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.1")) is None


def test_guarded_client_refuses_a_name_that_resolves_to_link_local_without_connecting() -> None:
    with make_client(timeout=5, concurrency=1, guarded=True) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError) as caught:
            # The resolver turns this name into 169.254.169.254; the guard must refuse before connecting.
            client.post("http://2852039166/latest/meta-data/", content=b"{}")
        assert time.monotonic() - started < 2, "it tried to connect"
        assert "link-local" in (refused_address(caught.value) or "")
