"""Following the mounted config file: a changed ``strategy`` applies without a restart.

Why a module: hot reload is the one place the worker reads configuration
after start-up, and its rules (hash the contents, not the mtime; an invalid
file or an unknown name keeps the running strategy; ``SCHEDULING_STRATEGY``
in the environment wins) are easier to see apart from the consuming loop.
Standbys follow the file too, so a new leader starts with the new strategy.
"""

from __future__ import annotations

import hashlib
import os

import structlog

from scheduler.config import config_path, load_settings
from scheduler.strategies import Placer, UnknownStrategy
from scheduler.worker.state import WorkerState

log = structlog.get_logger(__name__)


def config_digest() -> str | None:
    """Hash of the config file's contents (a ConfigMap update swaps a symlink: mtimes mislead)."""
    path = config_path()
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Applies a changed ``strategy`` to ``placer`` and counts switches in ``state``."""

    def __init__(self, placer: Placer, state: WorkerState) -> None:
        self.placer = placer
        self.state = state
        self._seen: str | None = config_digest()

    def check(self) -> None:
        """Apply a changed ``strategy`` from the mounted config file without a restart."""
        digest = config_digest()
        if digest is None or digest == self._seen:
            return
        self._seen = digest
        try:
            fresh = load_settings()
        except Exception as exc:  # ConfigError or an unreadable file: keep running as we are
            log.error(
                "config file changed but is invalid; keeping the current strategy",
                strategy=self.placer.default,
                error=str(exc),
            )
            self.state.strategy_switches_rejected += 1
            return
        if os.environ.get("SCHEDULING_STRATEGY"):
            log.warning(
                "config file changed, but SCHEDULING_STRATEGY in the environment overrides its strategy",
                strategy=self.placer.default,
            )
            return
        if fresh.strategy == self.placer.default:
            return
        try:
            self.placer.switch(fresh.strategy)
        except UnknownStrategy as exc:
            log.error("unknown strategy in config; keeping the current one", error=str(exc))
            self.state.strategy_switches_rejected += 1
            return
        log.info("strategy switched", strategy=fresh.strategy)
        self.state.strategy = fresh.strategy
        self.state.strategy_switches += 1


__all__ = ["ConfigWatcher", "config_digest"]
