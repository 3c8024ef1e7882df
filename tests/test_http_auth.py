"""Who may call what: every route of the app with every kind of caller, and the submission guards.

The role table below is checked against the app's own route list, so a route
added without a line here fails :func:`test_every_route_is_in_the_table`.
Everything runs against the real app, a real SQLite store and a real broker.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from starlette.routing import Mount, Route

from scheduler.config import ConfigError, Role, load_settings
from scheduler.http import HttpServer, create_app
from scheduler.http.auth import TokenTable, required_role
from scheduler.producer.publisher import Publisher
from tests.harness import Deployment, decode_lines, wait_until
from tests.test_http_support import settings_for, standard_workload

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    from fastapi.testclient import TestClient

TOKENS = {
    "read": "read-token-0123456789abcdef",
    "submit": "submit-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef",
}
CALLERS = ["anonymous", "wrong", "read", "submit", "admin"]
RANK = {"read": 1, "submit": 2, "admin": 3}

# (method, route path) -> (least role or None for open, concrete path, answer for a caller allowed in).
# Mounts are listed by their path with a file under them.
ROUTES: dict[tuple[str, str], tuple[str | None, str, int]] = {
    ("GET", "/healthz"): (None, "/healthz", 200),
    ("GET", "/readyz"): (None, "/readyz", 200),
    ("GET", "/"): (None, "/", 200),
    ("GET", "/static"): (None, "/static/dashboard.js", 200),
    ("GET", "/docs"): (None, "/docs", 200),
    ("GET", "/docs/assets"): (None, "/docs/assets/swagger-ui-bundle.js", 200),
    ("GET", "/openapi.json"): (None, "/openapi.json", 200),
    ("POST", "/schedule"): ("submit", "/schedule", 202),
    ("POST", "/plan"): ("submit", "/plan", 200),
    ("GET", "/result/{task_id}"): ("read", "/result/vm-1", 200),
    ("GET", "/tasks/{task_id}"): ("read", "/tasks/vm-1", 200),
    ("GET", "/tasks"): ("read", "/tasks", 200),
    ("GET", "/tasks/{task_id}/plan"): ("read", "/tasks/vm-1/plan", 200),
    ("GET", "/nodes"): ("read", "/nodes", 200),
    ("GET", "/api/summary"): ("read", "/api/summary", 200),
}


def guarded_app(dep: Deployment, **http: Any) -> FastAPI:
    settings = settings_for(dep, http={"tokens": {t: r for r, t in TOKENS.items()}, **http})
    return create_app(
        store=dep.store, publisher=Publisher(dep.amqp_url, dep.topology), state=None,
        registry=CollectorRegistry(), settings=settings,
    )  # fmt: skip


def headers(caller: str) -> dict[str, str]:
    if caller == "anonymous":
        return {}
    if caller == "wrong":
        return {"Authorization": "Bearer " + TOKENS["admin"][:-1] + "X"}
    return {"Authorization": f"Bearer {TOKENS[caller]}"}


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, APIRoute | Route):
            found |= {(m, route.path) for m in (route.methods or ()) if m != "HEAD"}
        elif isinstance(route, Mount):
            found.add(("GET", route.path))
        else:  # pragma: no cover - a kind of route this table does not know how to call
            raise AssertionError(f"unexpected route kind {route!r}")
    return found


def test_every_route_is_in_the_table(lite: Deployment) -> None:
    assert app_routes(guarded_app(lite)) == set(ROUTES)


def test_the_table_agrees_with_the_rule(lite: Deployment) -> None:
    for (method, _), (role, path, _) in ROUTES.items():
        needed = required_role(method, path)
        assert (needed.value if needed else None) == role, (method, path)


@pytest.mark.parametrize("caller", CALLERS)
def test_every_route_with_every_caller(lite: Deployment, caller: str) -> None:
    standard_workload(lite.store)
    with TestClient(guarded_app(lite, rate_limit="1000/second")) as client:
        for n, ((method, _), (role, path, ok)) in enumerate(sorted(ROUTES.items())):
            body = {"task_id": f"{caller}-{n}", "requested_cpu": 1, "requested_memory": 256}
            response = client.request(
                method, path, headers=headers(caller), json=body if method == "POST" else None
            )
            where = f"{caller} {method} {path}: {response.status_code} {response.text[:200]}"
            if role is None or (caller in RANK and RANK[caller] >= RANK[role]):
                assert response.status_code == ok, where
            elif caller in ("anonymous", "wrong"):
                assert response.status_code == 401, where
                challenge = response.headers["www-authenticate"]
                assert challenge.startswith("Bearer "), where
                assert ('error="invalid_token"' in challenge) == (caller == "wrong"), where
            else:
                assert response.status_code == 403, where
                assert role in response.json()["detail"], where


@pytest.mark.parametrize(
    ("caller", "expected"), [("anonymous", 401), ("read", 403), ("submit", 307), ("admin", 307)]
)
def test_a_trailing_slash_needs_the_role_of_the_route_it_is_redirected_to(
    lite: Deployment, caller: str, expected: int
) -> None:
    """``POST /schedule/`` told a ``submit`` token that it needed ``admin``; it only needs the redirect."""
    body = {"requested_cpu": 1, "requested_memory": 256}
    with TestClient(guarded_app(lite), follow_redirects=False) as client:
        response = client.post("/schedule/", headers=headers(caller), json=body)
        assert response.status_code == expected, response.text
        if expected == 307:
            assert response.headers["location"].endswith("/schedule")
        if expected == 403:
            assert "needs submit" in response.json()["detail"]
    assert required_role("GET", "/tasks/") is Role.READ and required_role("GET", "/healthz/") is None
    assert required_role("DELETE", "/schedule/") is Role.ADMIN


@pytest.mark.parametrize("caller", ["anonymous", "read"])
def test_head_is_answered_as_get_without_the_body(lite: Deployment, caller: str) -> None:
    """A GET route answered HEAD with 405: load balancer probes and ``curl -I`` saw a broken replica."""
    standard_workload(lite.store)
    with TestClient(guarded_app(lite)) as client:
        for (method, _), (_, path, _) in sorted(ROUTES.items()):
            if method != "GET":
                continue
            got = client.get(path, headers=headers(caller))
            head = client.head(path, headers=headers(caller))
            where = f"{caller} HEAD {path}: {head.status_code}, GET gave {got.status_code}"
            assert head.status_code == got.status_code, where
            assert head.content == b"", where
            assert head.headers["content-type"] == got.headers["content-type"], where
            if path != "/api/summary":  # the summary carries the time it was generated: not byte-stable
                assert head.headers.get("content-length") == got.headers.get("content-length"), where
        assert client.head("/schedule", headers=headers("admin")).status_code == 405


@pytest.mark.parametrize(
    ("caller", "expected"), [("anonymous", 401), ("read", 403), ("submit", 403), ("admin", 405)]
)
def test_other_methods_need_admin(lite: Deployment, caller: str, expected: int) -> None:
    with TestClient(guarded_app(lite)) as client:
        assert client.delete("/tasks/vm-1", headers=headers(caller)).status_code == expected


@pytest.mark.parametrize(("caller", "expected"), [("anonymous", 401), ("wrong", 401), ("read", 404)])
def test_unknown_paths_reveal_nothing_to_anonymous_callers(
    lite: Deployment, caller: str, expected: int
) -> None:
    with TestClient(guarded_app(lite)) as client:
        assert client.get("/no/such/route", headers=headers(caller)).status_code == expected


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + TOKENS["read"][:-1],  # a prefix
        "Bearer " + TOKENS["read"] + "x",  # longer
        "Bearer " + TOKENS["read"].upper(),
        "Basic " + TOKENS["read"],  # not the bearer scheme
        TOKENS["read"],  # no scheme
        "Bearer ",
    ],
)
def test_near_misses_are_refused(lite: Deployment, authorization: str) -> None:
    with TestClient(guarded_app(lite)) as client:
        response = client.get("/nodes", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("order", ["valid-first", "valid-last", "both-valid"])
def test_two_authorization_headers_are_refused(lite: Deployment, order: str) -> None:
    """Found from outside: with two ``Authorization`` headers the first was used and the other ignored,
    so whether a client's header or one a proxy adds wins depended on the order they were sent in."""
    valid = ("authorization", "Bearer " + TOKENS["admin"])
    wrong = TOKENS["read"] if order == "both-valid" else "nope-nope-nope-nope"
    other = ("authorization", "Bearer " + wrong)
    pairs = [valid, other] if order != "valid-last" else [other, valid]
    with TestClient(guarded_app(lite)) as client:
        response = client.get("/nodes", headers=httpx.Headers(pairs))
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid bearer token"


def test_token_table_matches_exactly_one_role() -> None:
    table = TokenTable({"a" * 20: Role.READ, "b" * 20: Role.ADMIN})
    assert table.lookup("a" * 20) is not None and table.lookup("a" * 20)[0] is Role.READ  # type: ignore[index]
    assert table.lookup("b" * 20)[0] is Role.ADMIN  # type: ignore[index]
    assert table.lookup("a" * 19) is None and table.lookup("") is None
    assert not TokenTable({})


TOKEN_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=0, max_size=80)


@settings(max_examples=300, deadline=None)
@given(tokens=st.dictionaries(TOKEN_TEXT, st.sampled_from(list(Role)), max_size=5), presented=TOKEN_TEXT)
def test_token_table_finds_exactly_the_configured_tokens(tokens: dict[str, Role], presented: str) -> None:
    table = TokenTable(tokens)
    found = table.lookup(presented)
    assert (found is not None) == (presented in tokens)
    if found is not None:
        assert found[0] is tokens[presented]
    for token, role in tokens.items():
        match = table.lookup(token)
        assert match is not None and match[0] is role


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(authorization=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120))
def test_any_authorization_header_other_than_a_token_is_401(lite: Deployment, authorization: str) -> None:
    if authorization.strip() in {f"Bearer {t}" for t in TOKENS.values()}:
        return
    with TestClient(guarded_app(lite)) as client:
        response = client.get("/api/summary", headers={"Authorization": authorization})
    assert response.status_code == 401, (authorization, response.text)


def test_openapi_declares_the_bearer_scheme(lite: Deployment) -> None:
    with TestClient(guarded_app(lite)) as client:
        spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/schedule"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


# ------------------------------------------------------------------ task ids


def drain_count(dep: Deployment) -> int:
    return dep.queue_depth(dep.queue)


def test_a_known_task_id_is_409_with_its_status_and_publishes_nothing(lite: Deployment) -> None:
    standard_workload(lite.store)
    with TestClient(guarded_app(lite)) as client:
        auth = headers("submit")
        first = client.post("/schedule", headers=auth, json={"task_id": "mine", "requested_cpu": 1,
                                                              "requested_memory": 256})  # fmt: skip
        assert first.status_code == 202
        again = client.post("/schedule", headers=auth, json={"task_id": "mine", "requested_cpu": 64,
                                                              "requested_memory": 1})  # fmt: skip
        assert again.status_code == 409
        assert again.json()["status"] == "queued" and again.json()["task_id"] == "mine"
        taken = client.post("/schedule", headers=auth, json={"task_id": "vm-1", "requested_cpu": 1,
                                                              "requested_memory": 256})  # fmt: skip
        assert taken.status_code == 409 and taken.json()["status"] == "scheduled"
        failed = client.post("/schedule", headers=auth, json={"task_id": "lost-pool", "requested_cpu": 1,
                                                               "requested_memory": 256})  # fmt: skip
        assert failed.status_code == 409 and failed.json()["status"] == "failed"
    assert drain_count(lite) == 1  # only the first
    record = lite.store.get_task("vm-1")
    assert record is not None and record.status.value == "scheduled" and record.request["requested_cpu"] == 4


# --------------------------------------------------------------- rate limits


def test_submissions_are_rate_limited_per_token_with_retry_after(lite: Deployment) -> None:
    with TestClient(guarded_app(lite, rate_limit="2/minute")) as client:

        def post(caller: str, n: int) -> httpx.Response:
            body = {"task_id": f"{caller}-{n}", "requested_cpu": 1, "requested_memory": 256}
            return client.post("/schedule", headers=headers(caller), json=body)

        assert [post("submit", n).status_code for n in range(2)] == [202, 202]
        limited = post("submit", 2)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "rate limit" in limited.json()["detail"]
        assert post("admin", 0).status_code == 202  # another token has its own budget
        assert client.get("/nodes", headers=headers("submit")).status_code == 200  # reads are not limited
    assert drain_count(lite) == 3
    assert lite.store.get_task("submit-2") is None


def test_a_forwarded_for_header_does_not_make_a_new_client(lite: Deployment) -> None:
    """Without tokens the limit is per client address, and ``X-Forwarded-For`` must not change it.

    Found from outside: uvicorn trusts proxy headers from 127.0.0.1 by default,
    and the token-less mode listens on 127.0.0.1 only, so every caller could
    name a new address per request (``X-Forwarded-For: 10.0.0.N``) and never
    meet the limit. No proxy is part of this deployment (behind one, tokens
    identify callers), so the server reads the peer address as it is.
    """
    settings = settings_for(lite, http={"rate_limit": "2/minute"})
    registry = CollectorRegistry()
    app = create_app(store=lite.store, publisher=None, state=None, registry=registry, settings=settings)
    server = HttpServer(app, host="127.0.0.1", port=0, limits=settings.http)
    server.start()
    try:
        body = {"requested_cpu": 1, "requested_memory": 256}
        spoofed = [{"X-Forwarded-For": f"10.0.0.{n}"} for n in range(4)]
        codes = [httpx.post(f"{server.url}/plan", json=body, headers=h).status_code for h in spoofed]
        assert codes == [200, 200, 429, 429]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:8080", 200),
        ("localhost", 200),
        ("LOCALHOST.:8080", 200),
        ("dash.localhost:8080", 200),
        ("[::1]:8080", 200),
        ("127.9.9.9", 200),
        ("rebind.attacker.example:8080", 403),
        ("127.0.0.1.nip.io", 403),
        ("[::ffff:127.0.0.1]", 403),
        ("localhost.attacker.example", 403),
        ("", 403),
    ],
)
def test_without_tokens_only_requests_addressed_to_localhost_are_answered(
    lite: Deployment, host: str, expected: int
) -> None:
    """DNS rebinding: found from outside, a token-less worker answered ``GET /nodes`` and accepted
    ``POST /schedule`` with ``Host: rebind.attacker.example``, which is what a browser sends once a
    page's name is re-pointed at 127.0.0.1: every web page the workstation's user opened could read
    the fleet and submit. The open files (health, dashboard shell) need no particular Host."""
    settings = settings_for(lite)
    registry = CollectorRegistry()
    app = create_app(store=lite.store, publisher=None, state=None, registry=registry, settings=settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = client.get("/nodes", headers={"Host": host})
        assert response.status_code == expected, response.text
        if expected == 403:
            assert "localhost" in response.json()["detail"]
            body = {"requested_cpu": 1, "requested_memory": 256}
            assert client.post("/plan", headers={"Host": host}, json=body).status_code == 403
        assert client.get("/healthz", headers={"Host": host}).status_code == 200


def test_refused_callers_do_not_spend_the_budget(lite: Deployment) -> None:
    with TestClient(guarded_app(lite, rate_limit="1/minute")) as client:
        for _ in range(3):
            assert client.post("/schedule", headers=headers("read"), json={}).status_code == 403
        body = {"task_id": "after", "requested_cpu": 1, "requested_memory": 256}
        assert client.post("/schedule", headers=headers("submit"), json=body).status_code == 202


# ------------------------------------------------------------------- config


def test_tokens_from_the_environment_and_never_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_TOKENS", json.dumps({TOKENS["read"]: "read"}))
    assert load_settings().http.tokens == {TOKENS["read"]: Role.READ}
    assert TOKENS["read"] not in repr(load_settings())
    monkeypatch.setenv("HTTP_TOKENS", json.dumps({TOKENS["read"]: "root"}))
    with pytest.raises(ConfigError) as bad_role:
        load_settings()
    monkeypatch.setenv("HTTP_TOKENS", json.dumps({"short": "read"}))
    with pytest.raises(ConfigError) as short:
        load_settings()
    monkeypatch.setenv("HTTP_TOKENS", "{" + TOKENS["read"])
    with pytest.raises(ConfigError) as not_json:
        load_settings()
    for err, words in ((bad_role, "role must be one of"), (short, "16 to 512"), (not_json, "JSON object")):
        text = str(err.value)
        assert "http.tokens" in text and words in text, text
        assert TOKENS["read"] not in text and "short" not in text


def test_metrics_port_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_PORT", "9191")
    assert load_settings().http.metrics_port == 9191
    monkeypatch.setenv("METRICS_PORT", "nine")
    with pytest.raises(ConfigError, match=r"http\.metrics_port \(env METRICS_PORT\)"):
        load_settings()


@pytest.mark.parametrize(
    ("http", "key"),
    [
        ({"rate_limit": "lots"}, "http.rate_limit"),
        ({"port": 9000, "metrics_port": 9000}, "metrics_port"),
        ({"keep_alive_timeout": 0}, "http.keep_alive_timeout"),
        ({"max_connections": 0}, "http.max_connections"),
    ],
)
def test_bad_http_settings_name_the_key(http: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(http=http)


def test_the_default_rate_limit_is_one_limits_parses() -> None:
    """The config validator takes the default on trust (to spare every CLI start importing limits)."""
    from limits import parse_many

    from scheduler.config import DEFAULT_RATE_LIMIT

    assert [str(item) for item in parse_many(DEFAULT_RATE_LIMIT)] == ["20 per 1 second", "600 per 1 minute"]
    assert load_settings().http.rate_limit == DEFAULT_RATE_LIMIT


# ------------------------------------------------------ the real worker's wiring


def test_worker_with_tokens_serves_the_network_and_never_logs_a_token(lite: Deployment) -> None:
    dep = lite
    dep.http = True
    dep.extra_env.update(
        {"SCHEDULER_HTTP__HOST": "0.0.0.0", "HTTP_TOKENS": json.dumps({TOKENS["read"]: "read"})}
    )
    dep.start_worker("tokened")
    url = dep.http_url("tokened")
    assert url.startswith("http://127.0.0.1:")  # logged as 0.0.0.0 (the harness shows it as loopback)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/nodes", headers={"Authorization": f"Bearer {TOKENS['read']}"}).status_code == 200
        assert client.get("/nodes", headers={"Authorization": "Bearer " + TOKENS["admin"]}).status_code == 401
        assert client.get("/nodes").status_code == 401
        assert client.get("/healthz").status_code == 200
        metrics = dep.http_url("tokened", listener="metrics")
        assert httpx.get(metrics + "/metrics", timeout=10).status_code == 200
        assert httpx.get(metrics + "/nodes", timeout=10).status_code == 404
    dep.stop_all()
    log = dep.log_of("tokened")
    assert TOKENS["read"] not in log and TOKENS["admin"] not in log
    served = [line for line in decode_lines(log) if line.get("event") == "http serving"]
    assert served and served[0]["url"].startswith("http://0.0.0.0:")
    assert not any("127.0.0.1 only" in str(line.get("event")) for line in decode_lines(log))


def test_worker_without_tokens_listens_on_loopback_only_and_says_so(lite: Deployment) -> None:
    dep = lite
    dep.http = True
    dep.extra_env.update({"SCHEDULER_HTTP__HOST": "0.0.0.0"})
    dep.start_worker("open")
    dep.http_url("open")
    lines = decode_lines(dep.log_of("open"))
    served = [line for line in lines if line.get("event") == "http serving"]
    assert served[0]["url"].startswith("http://127.0.0.1:")
    warned = [line for line in lines if "127.0.0.1 only" in str(line.get("event"))]
    assert len(warned) == 1 and warned[0]["configured_host"] == "0.0.0.0"
    dep.stop_all()
    wait_until(lambda: all(p.poll() is not None for p in dep.procs), 20, "the worker to stop")
