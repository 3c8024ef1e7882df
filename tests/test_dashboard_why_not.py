"""The dashboard's "why not" link, in a real headless Chromium, on a token-protected API.

A failed task's row links to its plan (``GET /tasks/{id}/plan``): clicking
it must show, in the page, the verdict and every filter with its count and
example nodes, fetched with the read token the page holds.
"""

from __future__ import annotations

from pathlib import Path

from scheduler.http import HttpServer
from tests.harness import wait_until
from tests.test_dashboard import ARTIFACTS, READ_TOKEN, DevTools, deployment, guarded

__all__ = ["deployment", "guarded"]  # the fixtures, used by name


def test_why_not_link_shows_the_plan_of_a_failed_task(guarded: HttpServer, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser = DevTools(tmp_path / "profile", guarded.url + "/")
    try:
        wait_until(
            lambda: browser.js("getComputedStyle(document.getElementById('token-form')).display !== 'none'"),
            30, "the page to ask for a token",
        )  # fmt: skip
        browser.js(f"document.getElementById('token-input').value = '{READ_TOKEN}';"
                   "document.getElementById('token-submit').click()")  # fmt: skip
        wait_until(lambda: browser.js("document.body.dataset.loaded === 'true'"), 30, "the dashboard")
        assert browser.js("document.getElementById('why-not-panel').hidden") is True
        assert browser.js("document.querySelectorAll('[data-why-not]').length") >= 2
        browser.js("document.querySelector('[data-why-not=\"lost-pool\"]').click()")
        panel = "document.getElementById('why-not').textContent"
        wait_until(lambda: "pool mismatch" in (browser.js(panel) or ""), 30, "the plan to show")
        text = browser.js(panel)
        assert "would still not be placed: unknown_pool" in text
        assert "6 pool mismatch" in text and "bm-01: in pool default, not nowhere" in text
        assert browser.js("document.getElementById('why-not-task').textContent") == "lost-pool"
        browser.screenshot(ARTIFACTS / "dashboard-why-not.png")
        # A task whose stored request is not valid says so instead of a plan.
        browser.js("document.querySelector('[data-why-not=\"bad-shape\"]').click()")
        wait_until(lambda: "not valid" in (browser.js(panel) or ""), 30, "the refusal to show")
    finally:
        browser.close()
