"""The callback URL policy: allow-list patterns matched per component, addresses refused, the connect guard.

The tables hold known server-side request forgery tricks; the properties
check, with URLs hypothesis builds, that whatever the policy allows goes
where the pattern says according to httpx (the sender) and to
``urllib.parse`` (a second, independent parser).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.config import ConfigError, load_settings
from scheduler.webhooks.policy import (
    address_refusal,
    callback_refusal,
    exact_hosts,
    literal_address,
    parse_pattern,
)
from scheduler.webhooks.transport import deadline, make_client, refused_address

CI = ["https://*.ci.example.com/scheduler/*"]


@pytest.mark.parametrize(
    "url",
    [
        # The reported bypass: the pattern's text found in the path of another authority.
        "http://127.0.0.1:5432/.ci.example.com/scheduler/x",
        "https://evil.example/.ci.example.com/scheduler/x",
        "https://evil.example?.ci.example.com/scheduler/x",
        "https://evil.example#.ci.example.com/scheduler/x",
        "https://evil.example/x.ci.example.com/scheduler/x",
        # userinfo: the allowed name before an @, the real host after it
        "https://a.ci.example.com@127.0.0.1/scheduler/x",
        "https://a.ci.example.com:443@evil.example/scheduler/x",
        "https://user:pw@a.ci.example.com/scheduler/x",
        "https://a.ci.example.com%40evil.example/scheduler/x",
        # percent-encoded dots and slashes
        "https://a%2Eci.example.com/scheduler/x",
        "https://a.ci.example.com%2F@evil.example/scheduler/x",
        "https://a.ci.example.com/scheduler%2F..%2F..%2Fadmin",
        "https://a.ci.example.com/scheduler/%2e%2e/%2e%2e/admin",
        "https://a.ci.example.com/scheduler/x%00",
        # backslashes (WHATWG parsers read them as slashes)
        "https://a.ci.example.com\\@evil.example/scheduler/x",
        "https://evil.example\\.ci.example.com/scheduler/x",
        "https://a.ci.example.com/scheduler\\..\\admin",
        # labels: one * is one label
        "https://a.b.ci.example.com/scheduler/x",
        "https://ci.example.com/scheduler/x",
        "https://a.ci.example.com.evil.example/scheduler/x",
        "https://a.ci.example.com../scheduler/x",
        # scheme, port, path
        "http://a.ci.example.com/scheduler/x",
        "https://a.ci.example.com:8443/scheduler/x",
        "https://a.ci.example.com:0/scheduler/x",
        "https://a.ci.example.com:99999/scheduler/x",
        "https://a.ci.example.com/other/x",
        "https://a.ci.example.com/scheduler",
        "https://a.ci.example.com/scheduler/../admin",
        # whitespace and control characters
        " https://a.ci.example.com/scheduler/x",
        "https://a.ci.example.com/scheduler/x\n",
        "https://a.ci.example.com/sched\tuler/x",
        "ftp://a.ci.example.com/scheduler/x",
        "//a.ci.example.com/scheduler/x",
        "https:///scheduler/x",
        "not a url",
    ],
)
def test_bypasses_and_relatives_are_refused(url: str) -> None:
    assert callback_refusal(url, CI) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://a.ci.example.com/scheduler/x",
        "HTTPS://A.CI.Example.COM/scheduler/x",  # mixed case
        "https://a.ci.example.com./scheduler/x",  # the root's trailing dot
        "https://a.ci.example.com:443/scheduler/x",  # the default port, written out
        "https://build-7.ci.example.com/scheduler/x/y?token=1",  # the query is not matched
    ],
)
def test_equivalent_spellings_of_an_allowed_url_are_allowed(url: str) -> None:
    assert callback_refusal(url, CI) is None


LOCAL = ["http://127.0.0.1:*/*", "http://[::1]:9000/*", "https://*.example.com/*", "http://*/*",
         "https://hooks.internal/*"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/x", True),  # named exactly
        ("http://[::1]:9000/x", True),
        ("https://hooks.internal/x", True),
        ("http://127.0.0.2:8080/x", False),  # not named
        ("http://2130706433:8080/x", False),  # 127.0.0.1, decimal
        ("http://0x7f000001:8080/x", False),  # ... hex
        ("http://0177.0.0.1:8080/x", False),  # ... octal
        ("http://0x7f.0.0.1:8080/x", False),  # ... mixed
        ("http://127.1:8080/x", False),  # ... short
        ("http://127.0.0.1.:8080/x", True),  # trailing dot: the same host
        ("http://[::ffff:127.0.0.1]:8080/x", False),  # mapped into IPv6, not named so
        ("http://[::ffff:7f00:1]:8080/x", False),
        ("http://[0:0:0:0:0:0:0:1]:9000/x", True),  # the same address as [::1]
        ("http://[::1]:9001/x", False),  # not that port
        ("http://[fe80::1%25eth0]/x", False),  # zone id
        ("http://[::1%25lo]:9000/x", False),
        ("http://localhost/x", False),  # a loopback name through a wildcard
        ("http://a.localhost/x", False),
        ("http://10.0.0.1/x", False),  # a wildcard never reaches an address
        ("http://192.168.1.1/x", False),
        ("http://foo.0x7f/x", False),  # ends in a number
        ("http://intranet/x", True),  # a name: what it resolves to is the connect guard's
        ("http://169.254.169.254/latest/meta-data/", False),
    ],
)
def test_ip_literals_and_loopback_only_when_named_exactly(url: str, allowed: bool) -> None:
    assert (callback_refusal(url, LOCAL) is None) is allowed, callback_refusal(url, LOCAL)


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
def test_metadata_and_link_local_are_refused_even_when_named(url: str) -> None:
    parsed = httpx.URL(url)
    exact = f"{parsed.scheme}://{parsed.netloc.decode()}/*"
    refusal = callback_refusal(url, [exact, "http://*/*"])
    assert refusal is not None and any(w in refusal for w in ("metadata", "link-local", "reserved", "dotted"))


def test_allow_list_decides_for_other_callbacks() -> None:
    allow = ["https://hooks.example.com/*", "http://127.0.0.1:*/ok/*"]
    assert callback_refusal("https://hooks.example.com/vm/1", allow) is None
    assert callback_refusal("http://127.0.0.1:9000/ok/1", allow) is None
    assert "matches no pattern" in (callback_refusal("https://evil.example/hooks", allow) or "")
    assert "webhooks.allow is empty" in (callback_refusal("https://hooks.example.com/vm", []) or "")
    assert "http:// or https://" in (callback_refusal("ftp://hooks.example.com/x", ["*"]) or "")
    refusal = callback_refusal("https://evil.example/x?token=tok-123", allow) or ""
    assert "tok-123" not in refusal, "a refusal shows the URL without its secrets"


@pytest.mark.parametrize(
    "pattern",
    ["*", "https://", "hooks.example.com/*", "https://user@hooks.example.com/*", "https://hooks.example.com/x?y=1",
     "ftp://hooks.example.com/*", "https://hooks.example.com:99999/*", "https://2130706433/*",
     "https://hooks.exa%2Emple.com/*", "https://hooks.example.com\\x/*", "https://[zz::1]/*"],
)
def test_bad_patterns_are_a_config_error_naming_the_key(pattern: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(pattern)
    with pytest.raises(ConfigError, match=r"webhooks\.allow"):
        load_settings(webhooks={"allow": [pattern]})


@pytest.mark.parametrize("key", ["max_backoff", "initial_backoff"])
def test_a_backoff_past_a_day_is_a_config_error_naming_the_key(key: str) -> None:
    """Found by setting SCHEDULER_WEBHOOKS__MAX_BACKOFF=1e12: after about 40 attempts the next retry
    fell past year 9999, the classifier raised OverflowError, and the dispatcher's fallback retried
    the delivery every initial_backoff: the receiver was hammered instead of spared."""
    with pytest.raises(ConfigError, match=rf"webhooks\.{key}"):
        load_settings(webhooks={key: 1e12})
    assert getattr(load_settings(webhooks={key: 86400}).webhooks, key) == 86400


def test_exact_hosts_are_the_patterns_without_wildcards() -> None:
    assert exact_hosts(LOCAL) == frozenset({"127.0.0.1", "::1", "hooks.internal"})


def test_literal_addresses_include_the_forms_resolvers_accept() -> None:
    assert literal_address("2852039166") == ipaddress.ip_address("169.254.169.254")
    assert literal_address("[::1]") == ipaddress.ip_address("::1")
    assert literal_address("hooks.example.com") is None
    assert address_refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert address_refusal(ipaddress.ip_address("127.0.0.1")) is None


# ----------------------------------------------------------------- properties

_PIECES = st.sampled_from(
    ["a", "ci", "example", "com", ".", "/", "@", ":", "%2e", "%2f", "%40", "\\", "?", "#", "[", "]",
     "127.0.0.1", "5432", "scheduler", "..", "x", "*", "%", "0x7f", "::1", "A", "-"]
)


@settings(max_examples=600, deadline=None)
@given(prefix=st.lists(_PIECES, max_size=8).map("".join), middle=st.lists(_PIECES, max_size=6).map("".join),
       suffix=st.lists(_PIECES, max_size=8).map("".join), scheme=st.sampled_from(["https", "http", "HTTPS"]))
def test_whatever_is_allowed_goes_where_the_pattern_says(
    prefix: str, middle: str, suffix: str, scheme: str
) -> None:
    url = f"{scheme}://{prefix}.ci.example.com{middle}/scheduler/{suffix}"
    if callback_refusal(url, CI) is not None:
        return
    sent = httpx.URL(url)  # where the dispatcher's client connects
    host = sent.host.rstrip(".")
    assert sent.scheme == "https" and sent.port in (None, 443)
    assert host.endswith(".ci.example.com") and host.count(".") == 3
    assert sent.raw_path.startswith(b"/scheduler/") and not sent.userinfo
    other = urlsplit(url)  # and a second parser agrees
    assert (other.hostname or "").rstrip(".").endswith(".ci.example.com") and other.port in (None, 443)
    assert other.path.startswith("/scheduler/")


def _ipv4_spellings(n: int) -> list[str]:
    a, b, c, d = n.to_bytes(4, "big")
    return [str(n), hex(n), f"0{n:o}", f"{a}.{b}.{c * 256 + d}", f"{a}.{b * 65536 + c * 256 + d}",
            f"0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}", f"0{a:o}.0{b:o}.0{c:o}.0{d:o}", f"[::ffff:{a}.{b}.{c}.{d}]",
            f"[::ffff:{a * 256 + b:x}:{c * 256 + d:x}]", f"[64:ff9b::{a}.{b}.{c}.{d}]", f"{a}.{b}.{c}.{d}"]


_INTERNAL = st.one_of(
    st.integers(0x7F000000, 0x7FFFFFFF),  # 127/8
    st.integers(0x0A000000, 0x0AFFFFFF),  # 10/8
    st.integers(0xAC100000, 0xAC1FFFFF),  # 172.16/12
    st.integers(0xC0A80000, 0xC0A8FFFF),  # 192.168/16
    st.integers(0xA9FE0000, 0xA9FEFFFF),  # 169.254/16
)


@settings(max_examples=300, deadline=None)
@given(n=_INTERNAL, port=st.one_of(st.none(), st.integers(1, 65535)))
def test_no_spelling_of_an_internal_address_passes_a_wildcard(n: int, port: int | None) -> None:
    wildcards = ["http://*/*", "http://*.*/*", "http://*.*.*.*/*", "http://*:*/*", "http://*.*.*.*:*/*"]
    for host in _ipv4_spellings(n):
        url = f"http://{host}{'' if port is None else f':{port}'}/x"
        assert callback_refusal(url, wildcards) is not None, url


# ----------------------------------------------------------------- the connect-time guard


@pytest.fixture
def local_receiver() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()
        server.server_close()


def test_guard_refuses_a_name_that_resolves_to_link_local_without_connecting() -> None:
    with make_client(timeout=5, concurrency=1, guarded=True, internal_ok=frozenset({"2852039166"})) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError) as caught:
            # The resolver turns this name into 169.254.169.254; even named exactly, it is refused.
            client.post("http://2852039166/latest/meta-data/", content=b"{}")
        assert time.monotonic() - started < 2, "it tried to connect"
        assert "link-local" in (refused_address(caught.value) or "")


def test_guard_refuses_a_name_resolving_to_loopback_unless_named_exactly(local_receiver: int) -> None:
    assert "127.0.0.1" in {i[4][0] for i in socket.getaddrinfo("localhost", local_receiver)}
    url = f"http://localhost:{local_receiver}/hook"
    with make_client(timeout=5, concurrency=1, guarded=True) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            client.post(url, content=b"{}")
        assert "internal address" in (refused_address(caught.value) or "")
    named = frozenset({"localhost"})
    with make_client(timeout=5, concurrency=1, guarded=True, internal_ok=named) as client, deadline(5):
        assert client.post(url, content=b"{}").status_code == 204


def test_guard_refuses_a_private_literal_unless_named_exactly(local_receiver: int) -> None:
    url = f"http://127.0.0.1:{local_receiver}/hook"
    with make_client(timeout=5, concurrency=1, guarded=True) as client, pytest.raises(httpx.ConnectError):
        client.post(url, content=b"{}")
    with make_client(timeout=5, concurrency=1, guarded=True, internal_ok=frozenset({"127.0.0.1"})) as client:
        assert client.post(url, content=b"{}").status_code == 204


def test_the_text_check_judges_a_name_by_its_labels_and_never_resolves_it() -> None:
    # .invalid never resolves (RFC 6761): the text check is pure; addresses are the guard's, at connect.
    assert callback_refusal("https://hooks.invalid/x", ["https://*.invalid/*"]) is None
