"""The config watcher against a directory laid out and updated the way the kubelet does it.

A ConfigMap volume holds ``..<timestamp>/config.yaml``, a symlink ``..data``
to that directory and ``config.yaml -> ..data/config.yaml``. An update writes
a new timestamped directory, swaps ``..data`` atomically (a temporary symlink
renamed over it) and deletes the old directory. The tests call
:meth:`ConfigWatcher.check` directly, as the worker's loop does once per
``worker.config_watch_interval``, so nothing here depends on timing.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from scheduler.strategies import Placer
from scheduler.worker.config_watcher import ConfigWatcher
from scheduler.worker.state import WorkerState

_stamps = itertools.count()


class ConfigMapDir:
    """A ConfigMap volume mount, updated with the kubelet's atomic symlink swap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "config.yaml"

    def write(self, text: str) -> None:
        stamp = f"..2026_12_07_20_00_{next(_stamps):02d}.000000001"
        (self.root / stamp).mkdir()
        (self.root / stamp / "config.yaml").write_text(text)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(stamp, tmp)
        os.replace(tmp, data)
        if not self.file.is_symlink():
            os.symlink("..data/config.yaml", self.file)
        if old is not None:
            shutil.rmtree(self.root / old)

    def current(self) -> Path:
        return self.root / os.readlink(self.root / "..data") / "config.yaml"


@pytest.fixture
def mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigMapDir:
    for name in list(os.environ):
        if name.startswith("SCHEDULER_") or name in {"SCHEDULING_STRATEGY", "AMQP_URL", "DATABASE_URL"}:
            monkeypatch.delenv(name)
    cm = ConfigMapDir(tmp_path)
    cm.write("strategy: least_loaded\n")
    monkeypatch.setenv("SCHEDULER_CONFIG", str(cm.file))
    return cm


def watcher() -> ConfigWatcher:
    placer = Placer("least_loaded")
    return ConfigWatcher(placer, WorkerState(strategy=placer.default))


def test_every_symlink_swap_is_picked_up_including_a_swap_back(mount: ConfigMapDir) -> None:
    w = watcher()
    mount.write("strategy: best_fit\n")
    w.check()
    assert w.placer.default == "best_fit" and w.state.strategy_switches == 1
    # Two swaps between checks, ending where it was: nothing to do, nothing counted.
    mount.write("strategy: cpu\n")
    mount.write("strategy: best_fit\n")
    w.check()
    assert w.placer.default == "best_fit" and w.state.strategy_switches == 1
    # Back to the original content, with the very same mtime as the file it replaces.
    before = os.stat(mount.current())
    mount.write("strategy: least_loaded\n")
    os.utime(mount.current(), ns=(before.st_atime_ns, before.st_mtime_ns))
    w.check()
    assert w.placer.default == "least_loaded" and w.state.strategy_switches == 2
    assert w.state.config_file_valid and not w.state.config_restart_required


def test_a_change_to_a_key_read_only_at_start_is_reported_not_silently_ignored(mount: ConfigMapDir) -> None:
    """``amqp.url`` or ``database`` cannot change live: the worker says so and what it keeps."""
    w = watcher()
    with capture_logs() as logs:
        mount.write(
            "strategy: memory\n"
            "amqp: {url: 'amqp://u:p@10.0.0.1:5672/%2F'}\n"
            "database: {migrate_on_start: false}\n"
        )
        w.check()
    assert w.placer.default == "memory"  # the strategy still applies
    assert w.state.config_restart_required
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert warned and warned[0]["keys"] == ["amqp.url", "database.migrate_on_start"]
    # Taking the change back clears the flag.
    mount.write("strategy: memory\n")
    w.check()
    assert not w.state.config_restart_required


@pytest.mark.parametrize("breakage", ["deleted", "directory", "invalid yaml", "unknown strategy"])
def test_a_broken_file_keeps_the_last_good_config_says_why_and_the_next_good_one_applies(
    mount: ConfigMapDir, breakage: str
) -> None:
    w = watcher()
    mount.write("strategy: best_fit\n")
    w.check()
    with capture_logs() as logs:
        if breakage == "deleted":
            mount.current().unlink()
        elif breakage == "directory":
            mount.current().unlink()
            mount.current().mkdir()
        else:
            mount.write("strategy: [best_fit\n" if breakage == "invalid yaml" else "strategy: fastest\n")
        w.check()
        w.check()  # the same breakage seen again is not a new rejection
    assert w.placer.default == "best_fit"
    assert not w.state.config_file_valid
    assert w.state.strategy_switches_rejected == 1
    assert [e["log_level"] for e in logs] == ["error"]
    mount.write("strategy: hybrid\n")
    w.check()
    assert w.placer.default == "hybrid" and w.state.config_file_valid


def test_an_empty_file_means_the_defaults_as_at_start(mount: ConfigMapDir) -> None:
    """An empty config.yaml is a valid one (every key at its default), live as at start."""
    w = watcher()
    mount.write("strategy: cpu\n")
    w.check()
    mount.write("")
    w.check()
    assert w.placer.default == "least_loaded" and w.state.config_file_valid


def test_a_change_while_the_worker_waited_for_the_database_is_applied(mount: ConfigMapDir) -> None:
    """The worker reads its settings, may wait minutes for the database, then builds the watcher.

    A ConfigMap update in between was hashed as already seen, and its strategy
    was never applied (the pod ran the old one until restarted).
    """
    from scheduler.config import load_settings

    started_with = load_settings()
    placer = Placer(started_with.strategy)
    mount.write("strategy: best_fit\nretry: {max_attempts: 9}\n")  # during the wait for the database
    w = ConfigWatcher(placer, WorkerState(strategy=placer.default), started_with)
    w.check()
    assert w.placer.default == "best_fit" and w.state.strategy_switches == 1
    assert w.state.config_restart_required  # retry.max_attempts is the one started with


def test_a_fifo_in_place_of_the_file_is_refused_without_blocking(mount: ConfigMapDir) -> None:
    """A FIFO blocked the worker's loop in open() for good; it is now refused like a directory."""
    w = watcher()
    mount.current().unlink()
    os.mkfifo(mount.current())
    w.check()  # returns: nothing writes to the FIFO
    assert not w.state.config_file_valid and w.state.strategy_switches_rejected == 1


def test_a_config_read_once_from_a_pipe_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mount: ConfigMapDir
) -> None:
    """``SCHEDULER_CONFIG=<(...)`` or /dev/null: read at start; reading again would find it empty."""
    monkeypatch.setenv("SCHEDULER_CONFIG", os.devnull)
    placer = Placer("cpu")  # as if the pipe had said cpu
    w = ConfigWatcher(placer, WorkerState(strategy="cpu"))
    w.check()
    assert w.placer.default == "cpu" and w.state.config_file_valid and w.state.strategy_switches == 0
