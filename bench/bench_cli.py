"""CLI benchmark: whole-process start-up times and ``submit --file`` against a raw publish.

Prints, next to their goals:

* ``scheduler --help``, ``scheduler strategies`` and ``scheduler submit`` of one
  request, each timed as a whole process (interpreter start, imports, work,
  exit), repeated like hyperfine: a warm-up run, then the median and the
  minimum of ``--runs`` runs;
* ``scheduler submit --file`` of 10,000 requests, and in the same run a raw
  publish of the same bodies with publisher confirms (persistent, mandatory,
  a window of 1,000 in flight on pika's SelectConnection): the best a client
  of this broker can do, so the ratio says what the CLI itself costs.

Every run uses its own exchange and queue (deleted afterwards), so it never
touches the ones a worker consumes. Nothing here asserts: it is a measurement.

Usage: ``.venv/bin/python bench/bench_cli.py [--runs N] [--messages N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.broker import Topology, message_properties  # noqa: E402
from tests.harness import delete_topology, make_requests  # noqa: E402

AMQP = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
SCHEDULER = str(Path(sys.executable).with_name("scheduler"))


def _env(suffix: str) -> dict[str, str]:
    return {
        **os.environ,
        "AMQP_URL": AMQP,
        "SCHEDULER_AMQP__EXCHANGE": f"bench.cli.{suffix}",
        "SCHEDULER_AMQP__QUEUE": f"bench.cli.{suffix}",
        "SCHEDULER_CONFIG": str(ROOT / "config.yaml"),
    }


def time_process(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """(median, min) seconds of ``argv`` as a whole process, after one warm-up run."""
    times: list[float] = []
    for i in range(runs + 1):
        start = time.perf_counter()
        out = subprocess.run(argv, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.decode()}")
        if i:
            times.append(elapsed)
    return statistics.median(times), min(times)


def raw_publish(bodies: list[tuple[str, bytes]], topo: Topology, window: int = 1000) -> float:
    """Seconds to publish ``bodies`` persistent + mandatory with confirms, ``window`` in flight."""
    state = {"next": 0, "confirmed": 0, "inflight": 0}
    params = pika.URLParameters(AMQP)

    def pump(ch: Channel) -> None:
        while state["next"] < len(bodies) and state["inflight"] < window:
            mid, body = bodies[state["next"]]
            ch.basic_publish(topo.exchange, "request", body, message_properties(mid), mandatory=True)
            state["next"] += 1
            state["inflight"] += 1

    def on_channel(ch: Channel) -> None:
        def on_ack(frame: pika.frame.Method) -> None:
            tag = frame.method.delivery_tag
            done = tag - state["confirmed"] if frame.method.multiple else 1
            state["confirmed"] += done
            state["inflight"] -= done
            if state["confirmed"] >= len(bodies):
                conn.close()
            else:
                pump(ch)

        ch.confirm_delivery(ack_nack_callback=on_ack, callback=lambda _f: pump(ch))

    conn = SelectConnection(
        params,
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, _r: c.ioloop.stop(),
    )
    start = time.perf_counter()
    conn.ioloop.start()
    return time.perf_counter() - start


def _cleanup(suffix: str) -> None:
    delete_topology(AMQP, Topology(f"bench.cli.{suffix}", f"bench.cli.{suffix}"))


def _declare(suffix: str) -> Topology:
    topo = Topology(f"bench.cli.{suffix}", f"bench.cli.{suffix}")
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    topo.declare(conn.channel())
    conn.close()
    return topo


def submit_vs_raw(n: int, rounds: int) -> tuple[float, float, float]:
    """Medians over ``rounds`` alternating runs: submit --file messages/s, raw publish messages/s,
    and seconds of a ``submit --file`` of one line (what the command costs besides publishing).

    Same bodies, same broker; the three alternate so that load from anything
    else on the machine falls on all alike.
    """
    reqs = make_requests(n, prefix=f"cli-{uuid.uuid4().hex[:8]}")
    lines = [r.model_dump_json() for r in reqs]
    bodies = [(r.task_id, line.encode()) for r, line in zip(reqs, lines, strict=True)]
    subs: list[float] = []
    raws: list[float] = []
    fixed: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reqs.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        one = Path(tmp) / "one.jsonl"
        one.write_text(make_requests(1, prefix=f"one-{uuid.uuid4().hex[:8]}")[0].model_dump_json() + "\n")
        for _ in range(rounds):
            suffix = uuid.uuid4().hex[:8]
            try:
                fixed.append(time_process([SCHEDULER, "submit", "--file", str(one)], _env(suffix), 1)[0])
            finally:
                _cleanup(suffix)
            suffix = uuid.uuid4().hex[:8]
            try:
                raws.append(n / raw_publish(bodies, _declare(suffix)))
            finally:
                _cleanup(suffix)
            suffix = uuid.uuid4().hex[:8]
            try:
                start = time.perf_counter()
                argv = [SCHEDULER, "submit", "--file", str(path)]
                out = subprocess.run(argv, env=_env(suffix), capture_output=True, check=False)
                elapsed = time.perf_counter() - start
            finally:
                _cleanup(suffix)
            if out.returncode != 0:
                raise RuntimeError(out.stderr.decode())
            if len(out.stdout.split()) != n:
                raise RuntimeError(f"submit printed {len(out.stdout.split())} ids, expected {n}")
            subs.append(n / elapsed)
    return statistics.median(subs), statistics.median(raws), statistics.median(fixed)


def _row(label: str, figure: str, goal: str, met: bool) -> None:
    print(f"{label:<44} {figure:>22}   goal {goal:<14} {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per command (median, min)")
    parser.add_argument("--messages", type=int, default=10000, help="requests for submit --file")
    parser.add_argument("--rounds", type=int, default=3, help="alternating submit/raw rounds (median)")
    args = parser.parse_args()
    suffix = uuid.uuid4().hex[:8]
    env = _env(suffix)
    checks: list[tuple[str, list[str], float]] = [
        ("scheduler --help", [SCHEDULER, "--help"], 0.3),
        ("scheduler strategies", [SCHEDULER, "strategies"], 0.3),
        ("scheduler submit (one request)", [SCHEDULER, "submit", "--cpu", "1", "--memory", "512"], 0.6),
    ]
    print(f"whole process, {args.runs} runs after a warm-up (median / min):")
    try:
        for label, argv, goal in checks:
            median, fastest = time_process(argv, env, args.runs)
            _row(label, f"{median:.3f} s / {fastest:.3f} s", f"<= {goal} s", median <= goal)
    finally:
        _cleanup(suffix)
    sub, raw, fixed = submit_vs_raw(args.messages, args.rounds)
    print(
        f"\nsubmit --file of {args.messages:,} requests against a raw publish with confirms,"
        f" {args.rounds} alternating rounds (median):"
    )
    _row("raw publish (persistent, mandatory, confirms)", f"{raw:,.0f} msg/s", "-", True)
    _row("scheduler submit --file (whole process)", f"{sub:,.0f} msg/s", "-", True)
    _row("ratio submit --file / raw", f"{sub / raw:.2f}x", ">= 0.8x", sub / raw >= 0.8)
    raw_secs = args.messages / raw
    allowed = raw_secs / 0.8 - raw_secs
    print(
        f"bound: at 0.8x the command may take {allowed:.3f} s more than the raw publish ({raw_secs:.3f} s);"
        f" a submit --file of one line (start-up, config, connection, topology, exit) takes {fixed:.3f} s"
    )


if __name__ == "__main__":
    main()
