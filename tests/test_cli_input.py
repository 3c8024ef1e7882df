"""Hostile and clumsy input to the CLI: every bad line is reported alone, nothing good is lost, no traceback.

The files are written byte by byte (a BOM, CR LF, a byte that is not UTF-8,
a line of megabytes), as editors, other systems and accidents make them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from scheduler.cli.common import CliError, cli
from scheduler.cli.submit import messages_from_file
from scheduler.models import MAX_BODY_BYTES
from tests.harness import delete_topology, start_publishing

SCHEDULER = str(Path(sys.executable).with_name("scheduler"))


def line(task_id: str) -> bytes:
    return json.dumps({"task_id": task_id, "requested_cpu": 1, "requested_memory": 512}).encode()


def test_a_line_that_is_not_utf8_is_skipped_alone_and_every_other_line_is_kept(tmp_path: Path) -> None:
    """Read as text, the first bad byte ended the file: the lines after it (a chunk later) were lost."""
    lines = [line(f"vm-{i}") for i in range(3000)]
    lines[1500] = b'{"task_id": "caf\xe9", "requested_cpu": 1, "requested_memory": 512}'
    trace = tmp_path / "reqs.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    good, problems = messages_from_file(str(trace))
    assert [m.message_id for m in good] == [f"vm-{i}" for i in range(3000) if i != 1500]
    assert problems == ["line 1501: not UTF-8 (byte 0xe9 at column 17)"]


def test_a_bom_and_crlf_line_ends_lose_no_line(tmp_path: Path) -> None:
    """A Windows editor's file: the BOM made line 1 "malformed JSON" and it was skipped."""
    trace = tmp_path / "reqs.jsonl"
    trace.write_bytes(b"\xef\xbb\xbf" + line("a") + b"\r\n" + line("b") + b"\r\n\r\n" + line("c"))
    good, problems = messages_from_file(str(trace))
    assert [m.message_id for m in good] == ["a", "b", "c"] and problems == []


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 10 * 1024 * 1024])
def test_a_line_over_the_limit_is_skipped_and_the_next_one_is_kept(tmp_path: Path, size: int) -> None:
    body = b'{"task_id": "big", "requested_cpu": 1, "requested_memory": 512, "x": "'
    big = body + b"a" * (size - len(body) - 2) + b'"}'
    assert len(big) == size
    exact = body + b"a" * (MAX_BODY_BYTES - len(body) - 2) + b'"}'  # at the limit: a body the broker takes
    trace = tmp_path / "reqs.jsonl"
    trace.write_bytes(big + b"\n" + line("after") + b"\r\n" + exact + b"\r\n")
    good, problems = messages_from_file(str(trace))
    assert problems[0] == f"line 1: longer than {MAX_BODY_BYTES} bytes"
    assert [m.message_id for m in good] == ["after"]
    assert problems[1].startswith("line 3: x: ")  # read whole and parsed: refused for its extra field


def test_stdin_that_is_not_utf8_is_a_skipped_line_not_a_traceback(tmp_path: Path) -> None:
    """stdin is decoded with surrogateescape: the size check's encode() raised UnicodeEncodeError."""
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {"PATH": "/usr/bin:/bin", "SCHEDULER_CONFIG": str(config), "AMQP_URL": "amqp://u:p@127.0.0.1:1/%2F"}
    done = subprocess.run(
        [SCHEDULER, "submit", "--file", "-"],
        input=line("s-1") + b"\n\xff\xfe\n",
        capture_output=True,
        env=env,
        timeout=60,
    )
    err = done.stderr.decode()
    assert "Traceback" not in err, err
    assert err.splitlines()[0] == "skipped: line 2: not UTF-8 (byte 0xff at column 1)"
    assert err.splitlines()[1].startswith("error: cannot connect to RabbitMQ")
    assert done.returncode == 2


@pytest.mark.parametrize("timeout", ["nan", "-1"])
def test_a_wait_timeout_that_cannot_end_or_is_negative_is_refused_before_publishing(
    tmp_path: Path, timeout: str
) -> None:
    """``--timeout nan`` made a deadline no clock passes: ``--wait`` polled for ever."""
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {"SCHEDULER_CONFIG": str(config), "AMQP_URL": "amqp://u:p@127.0.0.1:1/%2F"}
    args = ["submit", "--cpu", "1", "--memory", "512", "--wait", "--timeout", timeout]
    result = CliRunner().invoke(cli, args, env=env)
    assert isinstance(result.exception, CliError) and result.exit_code == 1, result.output
    assert str(result.exception).startswith("--timeout must be a number of seconds >= 0")


def test_a_config_file_that_is_not_utf8_is_one_error_line(tmp_path: Path) -> None:
    """Its UnicodeDecodeError escaped load_settings: every command (the worker too) died with a traceback."""
    config = tmp_path / "config.yaml"
    config.write_bytes(b"strategy: caf\xe9\n")
    result = CliRunner().invoke(
        cli, ["submit", "--cpu", "1", "--memory", "512"], env={"SCHEDULER_CONFIG": str(config)}
    )
    assert isinstance(result.exception, CliError) and result.exception.exit_code == 2, result.exception
    assert str(result.exception) == f"config file {config} is not UTF-8 (byte at offset 13)"


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "--file", "-"],
        ["plan", "--file", "-"],
        ["simulate", "--nodes", "examples/fleet.yaml", "--requests", "-"],
    ],
)
def test_stdin_closed_is_one_error_line_not_a_traceback(tmp_path: Path, args: list[str]) -> None:
    """With descriptor 0 closed at start (``<&-``) ``sys.stdin`` is None: ``-`` died on ``None.buffer``."""
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {**os.environ, "SCHEDULER_CONFIG": str(config), "AMQP_URL": "amqp://u:p@127.0.0.1:1/%2F"}
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" <&-', sys.executable, "-m", "scheduler", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (1, "error: -: standard input is closed\n")


def _unread(fd: int) -> int:
    """Bytes written to a pipe and not read yet."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def test_a_fifo_is_read_whole_before_the_broker_connection_opens(
    amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> None:
    """``--file <(command)`` or a FIFO was read while publishing, as a regular file is: the publisher's
    I/O loop waited on the writer, and a connection lost meanwhile (a writer that pauses for two
    heartbeats is enough) failed every line. Here the connection is cut while the writer pauses."""

    from scheduler.broker import Topology
    from tests.fault_proxy import FaultProxy
    from tests.harness import wait_until

    fifo = tmp_path / "reqs.fifo"
    os.mkfifo(fifo)
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    parts = urlsplit(amqp_url)
    topo = Topology(amqp_names["exchange"], amqp_names["queue"])
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        proc = start_publishing(["submit", "--file", str(fifo)], proxy.url_through(amqp_url), topo, config)
        try:

            def writer() -> int | None:
                assert proc.poll() is None, proc.communicate()
                try:
                    return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # ENXIO: the command has not opened it yet
                        raise
                    return None

            fd = wait_until(writer, 60, "the command to open the FIFO")
            os.set_blocking(fd, True)
            try:
                os.write(fd, line("p-1") + b"\n")
                wait_until(lambda: _unread(fd) == 0, 60, "the command to read the first line")
                proxy.fault("reset")  # the writer pauses; whatever connection is open is lost
                proxy.heal()
                os.write(fd, line("p-2") + b"\n")
            finally:
                os.close(fd)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            delete_topology(amqp_url, topo)
    assert (proc.returncode, out.split(), err) == (0, ["p-1", "p-2"], "")


@pytest.mark.parametrize(
    "name",
    ["bm-\x1b]0;owned\x07", "bm-\x1b[2J", "bm-\u202eevil", "bm-\x9b31m"],
    ids=["osc-title", "csi-clear", "rtl-override", "c1-csi"],
)
def test_a_fleet_files_hostile_node_name_reaches_the_terminal_escaped(tmp_path: Path, name: str) -> None:
    """``nodes import``'s error names the refused node as the file wrote it: an escape sequence in a
    fleet file someone else wrote reached the operator's terminal raw (click strips only CSI colour
    sequences, and only when standard error is not a terminal), a right-to-left override disguised
    the name."""
    fleet = tmp_path / "fleet.json"
    fleet.write_text(
        json.dumps({"nodes": [{"name": name, "ip": "10.0.0.1", "cpu": 1, "memory": 1, "max_vms": 1}]})
    )
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {**os.environ, "SCHEDULER_CONFIG": str(config), "DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    out = subprocess.run(
        [sys.executable, "-m", "scheduler", "nodes", "import", str(fleet)],
        capture_output=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert out.returncode == 1
    err = out.stderr.decode()
    assert err.startswith("error: ") and "nothing imported" in err
    assert not any(c in err for c in "\x1b\x07\x9b\u202e"), ascii(err)
    assert "bm-\\" in err  # shown escaped, not dropped


@pytest.mark.parametrize("command", ["submit", "plan"])
@pytest.mark.parametrize(
    "flags",
    [("--pool", "ai"), ("--dedicated",), ("--strategy", "best_fit"), ("--tag", "gpu", "--priority", "9")],
    ids=["pool", "dedicated", "strategy", "tag+priority"],
)
def test_a_request_flag_beside_file_is_refused_not_silently_ignored(
    tmp_path: Path, command: str, flags: tuple[str, ...]
) -> None:
    """Only --cpu, --memory and --task-id were refused with --file: ``submit --file f --pool ai
    --dedicated`` published every line to its own pool, exit 0, as if the flags had applied."""
    requests = tmp_path / "reqs.jsonl"
    requests.write_text('{"task_id": "a", "requested_cpu": 1, "requested_memory": 512}\n')
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {
        "SCHEDULER_CONFIG": str(config),
        "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F",  # nothing may be published, nor tried
        "DATABASE_URL": f"sqlite:///{tmp_path / 'absent.db'}",
    }
    result = CliRunner().invoke(cli, [command, "--file", str(requests), *flags], env=env)
    assert isinstance(result.exception, CliError) and result.exit_code == 1, result.output
    message = str(result.exception)
    assert message.startswith("give either --file or the request flags, not both"), message
    assert all(flag in message for flag in flags if flag.startswith("--")), message


@pytest.mark.parametrize(
    "args", [["nodes", "import", "/dev/zero"], ["simulate", "--nodes", "/dev/zero", "--requests", "-"]]
)
def test_a_fleet_file_without_end_is_one_error_line_not_all_the_memory(
    tmp_path: Path, args: list[str]
) -> None:
    """``nodes import /dev/zero`` (or a huge log given by mistake) read the whole file: the process grew
    until the memory ran out, then a MemoryError traceback. Here the memory is capped at 1 GiB."""
    import resource

    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero here")

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {**os.environ, "SCHEDULER_CONFIG": str(config), "DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    out = subprocess.run(
        [sys.executable, "-m", "scheduler", *args],
        input="",
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
        preexec_fn=cap_memory,
    )
    assert (out.returncode, out.stderr) == (1, "error: /dev/zero: larger than 128 MiB: not a fleet file?\n")


def test_a_trace_line_is_bounded_as_a_submitted_line_is(tmp_path: Path) -> None:
    """``simulate --requests`` read a line whole however long (``/dev/zero``: to the last byte of
    memory); a line over the message size is now refused by name, as ``submit`` and ``plan`` do."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("nodes: [{name: n1, ip: 10.0.0.1, cpu: 4, memory: 4096}]\n")
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b"x" * (MAX_BODY_BYTES * 4) + b"\n" + line("kept"))
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    result = CliRunner().invoke(
        cli,
        ["simulate", "--nodes", str(fleet), "--requests", str(trace)],
        env={"SCHEDULER_CONFIG": str(config)},
    )
    assert isinstance(result.exception, CliError), result.output
    assert str(result.exception) == f"{trace}: line 1: longer than {MAX_BODY_BYTES} bytes"
