"""The dashboard in a real headless Chromium, fed by a real worker placing requests submitted over HTTP.

Everything runs as in production, in one process: the worker daemon in a
thread (leader, consuming from RabbitMQ, committing to the database), the
HTTP server in another, and Chromium loading ``/`` from it. The test submits
requests with ``POST /schedule``, waits for the placements, then checks that
the page Chromium rendered shows every node, the placement, a failure with
its reason, and the leader. The screenshot is kept in ``test-artifacts/``.

Chromium is Debian's ``chromium`` package. Without it the test is skipped on
a workstation but fails in CI (``CI=true``), where it must have been installed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket
from prometheus_client import CollectorRegistry

from scheduler.elector import AlwaysLeader
from scheduler.http import HttpServer, create_app
from scheduler.metrics import install_metrics
from scheduler.producer.publisher import Publisher
from scheduler.worker.daemon import Worker
from tests.harness import Deployment, wait_until
from tests.test_http_support import make_deployment, settings_for, standard_workload

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,900",
    "--virtual-time-budget=5000",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "headless Chromium not found; install it with: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Running:
    deployment: Deployment
    server: HttpServer
    worker: Worker


@pytest.fixture
def deployment(
    sqlite_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> Iterator[Deployment]:
    yield from make_deployment(sqlite_url, amqp_url, amqp_names, tmp_path)


@pytest.fixture
def running(deployment: Deployment) -> Iterator[Running]:
    """A leading worker and the HTTP server in this process, wired as ``scheduler worker`` wires them."""
    chromium()  # fail or skip before starting anything
    dep = deployment
    settings = settings_for(
        dep, identity="dashboard-leader", worker={"commit_interval_ms": 2},
        retry={"max_attempts": 2, "initial_backoff": 0.05, "max_backoff": 0.1},
    )  # fmt: skip
    registry = CollectorRegistry()
    hooks, _ = install_metrics(registry, store=dep.store, settings=settings, state=lambda: worker.state)
    worker = Worker(settings, dep.store, AlwaysLeader(settings.identity, epoch=1), hooks=hooks)
    app = create_app(
        store=dep.store, publisher=Publisher(dep.amqp_url, dep.topology), state=lambda: worker.state,
        registry=registry, settings=settings,
    )  # fmt: skip
    server = HttpServer(app, host="127.0.0.1", port=0)
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    server.start()
    try:
        wait_until(lambda: worker.state.leader, 20, "the worker to lead")
        yield Running(dep, server, worker)
    finally:
        server.stop()
        worker.stopping.set()
        thread.join(20)


def render(url: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"chromium-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def test_dashboard_shows_nodes_placements_failures_and_leader(running: Running, tmp_path: Path) -> None:
    base = running.server.url
    submissions = [
        {"task_id": f"web-{i:02d}", "requested_cpu": cpu, "requested_memory": mem, "requested_disk": 20}
        for i, (cpu, mem) in enumerate([(8, 32768), (4, 16384), (8, 16384), (2, 4096), (6, 24576), (4, 8192),
                                        (12, 49152), (2, 2048), (8, 40960), (4, 4096)])
    ] + [
        {"task_id": "train-gpu", "requested_cpu": 24, "requested_memory": 98304, "requested_pool": "gpu",
         "required_tags": ["gpu"]},
        {"task_id": "wrong-pool", "requested_cpu": 2, "requested_memory": 2048, "requested_pool": "storage"},
        {"task_id": "needs-cuda", "requested_cpu": 2, "requested_memory": 2048, "requested_pool": "gpu",
         "required_tags": ["cuda-13"]},
    ]  # fmt: skip
    with httpx.Client(base_url=base, timeout=30) as client:
        for body in submissions:
            assert client.post("/schedule", json=body).status_code == 202, body

        def all_done() -> bool:
            return all(
                client.get(f"/result/{b['task_id']}").json()["status"] != "processing" for b in submissions
            )

        wait_until(all_done, 30, "every submission to be decided", interval=0.2)
        placed = client.get("/result/train-gpu").json()
        assert placed["status"] == "completed" and placed["result"]["name"].startswith("gpu-")
        summary = client.get("/api/summary").json()
        assert summary["leader"]["identity"] == "dashboard-leader"

    dom = render(base + "/", "--dump-dom", tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert 'data-loaded="true"' in page, "the page never rendered a summary"
    for node in ("bm-01", "bm-02", "bm-03", "bm-04", "gpu-01", "gpu-02"):
        assert f'data-node="{node}"' in page, node
    assert 'data-task="train-gpu"' in page and placed["result"]["name"] in page
    assert 'data-task="wrong-pool"' in page and "unknown_pool" in page
    assert "dashboard-leader" in page and 'id="leader-strategy">least_loaded<' in page

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    taken = render(base + "/", f"--screenshot={shot}", tmp_path=tmp_path)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000


# ------------------------------------------------------- a token-protected API

READ_TOKEN = "dashboard-read-token-0123456789"
SUBMIT_TOKEN = "dashboard-submit-token-0123456789"


class DevTools:
    """Just enough of the Chrome DevTools Protocol (over ``websocket-client``) to drive one page.

    Why by hand: ``--dump-dom`` cannot type into a form or reload a tab, and
    the browser automation libraries download their own browsers; Debian's
    Chromium speaks this protocol as it is.
    """

    def __init__(self, profile: Path, url: str) -> None:
        self.proc = subprocess.Popen(
            [chromium(), *[f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time")],
             "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        port = wait_until(
            lambda: port_file.is_file() and port_file.read_text().split("\n")[0], 30, "DevTools"
        )
        targets = f"http://127.0.0.1:{port}/json/list"
        pages = wait_until(
            lambda: [t for t in httpx.get(targets).json() if t["type"] == "page"], 30, "a page"
        )
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def js(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture
def guarded(deployment: Deployment) -> Iterator[HttpServer]:
    """The API with tokens configured, over a finished workload (no worker needed to read)."""
    chromium()
    standard_workload(deployment.store)
    settings = settings_for(deployment, http={"tokens": {READ_TOKEN: "read", SUBMIT_TOKEN: "submit"}})
    app = create_app(
        store=deployment.store, publisher=None, state=None, registry=CollectorRegistry(), settings=settings
    )
    server = HttpServer(app, host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_dashboard_asks_once_for_a_read_token_and_keeps_it_for_the_session(
    guarded: HttpServer, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser = DevTools(tmp_path / "profile", guarded.url + "/")
    try:
        form_shown = "getComputedStyle(document.getElementById('token-form')).display !== 'none'"
        loaded = "document.body.dataset.loaded === 'true'"
        wait_until(lambda: browser.js(form_shown), 30, "the page to ask for a token")
        assert browser.js(loaded) is False
        assert browser.js("document.querySelectorAll('[data-node]').length") == 0  # nothing without a token
        browser.screenshot(ARTIFACTS / "dashboard-token.png")

        # A token refused (wrong) is forgotten and the page asks again.
        browser.js("document.getElementById('token-input').value = 'not-a-token-at-all-0000';"
                   "document.getElementById('token-submit').click()")  # fmt: skip
        wait_until(
            lambda: browser.js(form_shown)
            and "refused" in browser.js("document.getElementById('token-message').textContent"),
            30, "the wrong token to be refused",
        )  # fmt: skip
        assert browser.js("sessionStorage.getItem('virtflow-scheduler.token')") is None

        browser.js(f"document.getElementById('token-input').value = '{READ_TOKEN}';"
                   "document.getElementById('token-submit').click()")  # fmt: skip
        wait_until(lambda: browser.js(loaded), 30, "the dashboard to load with the token")
        assert browser.js(form_shown) is False
        assert browser.js("document.querySelectorAll('[data-node]').length") == 6
        assert browser.js("sessionStorage.getItem('virtflow-scheduler.token')") == READ_TOKEN

        # Reloading the tab does not ask again: the token is kept for the browser session.
        browser.call("Page.reload")
        wait_until(
            lambda: browser.js("document.readyState === 'complete'") and browser.js(loaded), 30, "reload"
        )
        assert browser.js(form_shown) is False
        shot = ARTIFACTS / "dashboard-signed-in.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
    finally:
        browser.close()
