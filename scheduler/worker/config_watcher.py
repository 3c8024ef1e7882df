"""Following the mounted config file: a changed ``strategy`` applies without a restart.

Why a module: hot reload is the one place the worker reads configuration
after start-up, and its rules (hash the contents, not the mtime; an invalid
file or an unknown name keeps the running strategy; ``SCHEDULING_STRATEGY``
in the environment wins) are easier to see apart from the consuming loop.
Standbys follow the file too, so a new leader starts with the new strategy.

Every other key is read at start only. A change to one of them (``amqp.url``,
``database``...) is not applied live, and saying nothing about it let an
operator believe a ``kubectl edit`` had taken effect; the watcher logs the keys
that wait for a restart and sets ``scheduler_config_restart_required``. A file
that cannot be read any more (deleted, replaced by a directory, unreadable) is
logged and counted like an invalid one: the next restart would refuse to start.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

import structlog

from scheduler.config import MAX_CONFIG_BYTES, Settings, config_path, load_settings
from scheduler.strategies import Placer, UnknownStrategy
from scheduler.worker.state import WorkerState

log = structlog.get_logger(__name__)


def _file_key() -> str | None:
    """The digest of the file, or ``error:<why>`` when it cannot be read, or None without a file.

    Why the error is part of the key: a file that disappears (or becomes a
    directory, or unreadable) is a change worth one log line, not silence, and
    the same error seen again on the next check is not a new change.
    """
    path = config_path()
    if path is None:
        return None
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            # A FIFO blocked the worker's loop in open() for good (the
            # leader kept its lease and stopped consuming); /dev/zero was
            # read without end. Only a regular file is read.
            return "error:not a regular file"
        with path.open("rb") as handle:
            # As much as load_settings reads: a file grown to gigabytes was
            # read whole on every check.
            return hashlib.sha256(handle.read(MAX_CONFIG_BYTES + 1)).hexdigest()
    except OSError as exc:
        return f"error:{exc.strerror or exc}"


def _followable() -> bool:
    """False when the worker started from something other than a regular file (``/dev/null``, a pipe).

    Why: such a file was read once at start (a ``<(...)`` pipe is empty now);
    following it would read it as a change to an empty config.
    """
    path = config_path()
    if path is None:
        return True  # ./config.yaml may appear later
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return True


def changed_keys(running: Settings, fresh: Settings) -> list[str]:
    """Dotted keys, other than ``strategy``, whose values differ between two settings."""

    def walk(prefix: str, old: Any, new: Any, out: list[str]) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(old.keys() | new.keys(), key=str):
                walk(f"{prefix}{key}.", old.get(key), new.get(key), out)
        elif old != new:
            out.append(prefix.rstrip("."))

    out: list[str] = []
    walk("", running.model_dump(exclude={"strategy"}), fresh.model_dump(exclude={"strategy"}), out)
    return out


class ConfigWatcher:
    """Applies a changed ``strategy`` to ``placer`` and counts switches in ``state``."""

    def __init__(self, placer: Placer, state: WorkerState, running: Settings | None = None) -> None:
        """``running``: the settings the worker started with (read before it waited for the database).

        Why the first :meth:`check` always reads the file: the worker reads its
        settings, then may wait minutes for the database before the watcher
        exists. A file changed during that wait used to be hashed here as
        already seen, so its strategy was never applied; now the first check
        compares the file with what the worker runs.
        """
        self.placer = placer
        self.state = state
        self._seen: str | None = ""  # no file key is "": the first check reads the file
        if running is None:
            try:
                running = load_settings()
            except Exception:  # the daemon already refused or accepted the file; no baseline then
                running = None
        self._running = running
        self._follow = _followable()

    def check(self) -> None:
        """Apply a changed ``strategy`` from the mounted config file without a restart."""
        if not self._follow:
            return
        key = _file_key()
        if key is None or key == self._seen:
            return
        self._seen = key
        if key.startswith("error:"):
            log.error(
                "config file cannot be read; keeping the current configuration (a restart would fail)",
                path=str(config_path()),
                error=key.removeprefix("error:"),
                strategy=self.placer.default,
            )
            self.state.strategy_switches_rejected += 1
            self.state.config_file_valid = False
            return
        try:
            fresh = load_settings()
        except Exception as exc:  # ConfigError or an unreadable file: keep running as we are
            log.error(
                "config file changed but is invalid; keeping the current strategy",
                strategy=self.placer.default,
                error=str(exc),
            )
            self.state.strategy_switches_rejected += 1
            self.state.config_file_valid = False
            return
        self.state.config_file_valid = True
        self._note_restart_keys(fresh)
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

    def _note_restart_keys(self, fresh: Settings) -> None:
        """Say which changed keys wait for a restart (only ``strategy`` applies live)."""
        if self._running is None:
            return
        keys = changed_keys(self._running, fresh)
        self.state.config_restart_required = bool(keys)
        if keys:
            log.warning(
                "config file changed keys that apply only at start; restart the worker to apply them",
                keys=keys,
            )


__all__ = ["ConfigWatcher", "changed_keys"]
