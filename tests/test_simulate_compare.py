"""``scheduler simulate``: the quality figures, ``--compare`` side by side, ``--json`` and ``--report``.

Why these cases: the figures are only useful if they say the right thing on
a situation small enough to work out by hand. The fleet is two CPU nodes
and one GPU node of 32 vCPUs; the trace is twelve 4-vCPU VMs, a release,
then a VM asking all four GPUs and the whole GPU node. Spread strategies
used to put CPU-only VMs on the GPU node; every strategy now keeps them
off it, so the GPU VM fits. A second trace fragments on purpose: 24-vCPU
VMs on 32-vCPU nodes leave 8 vCPUs on each, and a 16-vCPU VM is refused
while the pool holds 24 free in aggregate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import scheduler.cli.simulate  # noqa: F401  (registers the commands)
from scheduler.cli.common import cli

Run = Callable[..., Result]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

FLEET = """
nodes:
  - {name: cpu-1, ip: 10.0.0.1, cpu: 32, memory: 131072, disk: 100}
  - {name: cpu-2, ip: 10.0.0.2, cpu: 32, memory: 131072, disk: 100}
  - {name: gpu-1, ip: 10.0.0.3, cpu: 32, memory: 131072, disk: 100, resources: {gpu: 4}}
"""


def lines(*items: dict[str, object]) -> str:
    return "\n".join(json.dumps(x) for x in items) + "\n"


GPU_TRACE = lines(
    *({"task_id": f"v{i}", "requested_cpu": 4, "requested_memory": 8192} for i in range(12)),
    {"release": "v0"},
    {"task_id": "train", "requested_cpu": 32, "requested_memory": 65536, "requested_resources": {"gpu": 4}},
)
# 24 vCPUs on each of the three nodes, then 16: refused with 24 free in aggregate (8 on each node).
FRAG_TRACE = lines(
    *({"task_id": f"big{i}", "requested_cpu": 24, "requested_memory": 8192} for i in range(3)),
    {"task_id": "mid", "requested_cpu": 16, "requested_memory": 8192},
)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    config = tmp_path / "config.yaml"
    config.write_text("strategy: least_loaded\n")
    runner = CliRunner()
    env = {"SCHEDULER_CONFIG": str(config), "COLUMNS": "220", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, list(args), env=env, catch_exceptions=True)

    yield invoke


def files(tmp_path: Path, trace: str) -> list[str]:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    (tmp_path / "trace.jsonl").write_text(trace)
    return ["--nodes", str(tmp_path / "fleet.yaml"), "--requests", str(tmp_path / "trace.jsonl")]


def test_compare_json_gives_one_summary_per_strategy_on_the_same_trace(run: Run, tmp_path: Path) -> None:
    result = run(
        "simulate", *files(tmp_path, GPU_TRACE), "--compare", "best_fit,least_loaded,round_robin", "--json"
    )
    assert result.exit_code == 0, result.output
    out = [json.loads(x) for x in result.output.splitlines()]
    assert [x["strategy"] for x in out] == ["best_fit", "least_loaded", "round_robin"]
    for x in out:
        s = x["summary"]
        # 12 CPU VMs (48 vCPUs) fit the CPU nodes; the GPU VM takes the whole GPU node.
        assert (s["placed"], s["rejected"], s["released"]) == (13, 0, 1), x
        assert s["vcpus_placed"] == 12 * 4 + 32
        assert s["utilization"]["default"]["gpu"] == 1.0
        assert s["first_fragmentation"] == {} and s["first_device_fragmentation"] == {}
        assert s["nodes_used"] == 3
    by = {x["strategy"]: x["summary"] for x in out}
    # best_fit packs the 12 VMs onto one CPU node at peak plus... 48 vCPUs need two 32-vCPU nodes.
    assert by["best_fit"]["nodes_used_peak"] == 3
    assert by["least_loaded"]["nodes_used_peak"] == 3


def test_summary_reports_fragmentation_and_stranding(run: Run, tmp_path: Path) -> None:
    result = run("simulate", *files(tmp_path, FRAG_TRACE), "--json", "--strategy", "least_loaded")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])["summary"]
    assert summary["placed"] == 3 and summary["rejected"] == 1
    # Line 4 is refused with 72 of 96 vCPUs in use: fragmentation, not a full pool.
    assert summary["first_fragmentation"]["default"] == {"line": 4, "cpu": 0.75, "memory": 0.0625}
    # Smallest request seen: 16 vCPUs (the refused one counts) -> every node's 8 free vCPUs are too few,
    # so all free memory is stranded (3 x 120 GiB of 3 x 128 GiB); no node lacks memory.
    assert summary["stranded"]["default"] == {"cpu": 0.0, "memory": 0.9375}
    assert summary["nodes_used_peak"] == 3


def test_a_full_pool_is_not_fragmentation(run: Run, tmp_path: Path) -> None:
    trace = FRAG_TRACE.replace('"requested_cpu": 16', '"requested_cpu": 28')  # 28 > 24 free in aggregate
    result = run("simulate", *files(tmp_path, trace), "--json", "--strategy", "least_loaded")
    summary = json.loads(result.output.splitlines()[-1])["summary"]
    assert summary["rejected"] == 1 and summary["first_fragmentation"] == {}


def test_compare_table_puts_strategies_side_by_side(run: Run, tmp_path: Path) -> None:
    result = run("simulate", *files(tmp_path, FRAG_TRACE), "--compare", "least_loaded,best_fit")
    assert result.exit_code == 0, result.output
    text = result.output
    header = next(line for line in text.splitlines() if "least_loaded" in line)
    assert header.index("least_loaded") < header.index("best_fit")  # in the order asked
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in text.splitlines()
        if line.count("│") >= 3
    }
    assert rows["placed"] == ["3", "3"]
    assert rows["rejected"] == ["1", "1"]
    assert rows["default: cpu at 1st fragmentation"] == ["75.0%", "75.0%"]
    assert rows["nodes used (peak)"] == ["3", "3"]
    assert rows["default: stranded memory"] == ["93.8%", "93.8%"]


def test_single_run_summary_shows_the_new_figures(run: Run, tmp_path: Path) -> None:
    result = run("simulate", *files(tmp_path, FRAG_TRACE), "--strategy", "best_fit")
    assert result.exit_code == 0, result.output
    assert "nodes used (end / peak)" in result.output and "3 / 3" in result.output
    assert "cpu 75.0% mem 6.2% (line 4)" in result.output
    assert "cpu 0.0% mem 93.8%" in result.output


def test_a_reused_task_id_is_decided_once_as_the_worker_does(run: Run, tmp_path: Path) -> None:
    """The simulator placed a released or refused task id anew, called a different request under a
    placed id a duplicate (placed), and placed a request whose release came first; the worker keeps the
    first outcome, fails a different request as ``conflict`` and never places a cancelled task."""
    small = {"requested_cpu": 4, "requested_memory": 8192}
    trace = lines(
        {"task_id": "a", **small},
        {"task_id": "a", **small},  # the same again: a duplicate
        {"task_id": "a", "requested_cpu": 8, "requested_memory": 8192},  # another request: a conflict
        {"release": "a"},
        {"task_id": "a", **small},  # released: not placed again
        {"release": "c"},  # before its request: a cancel
        {"task_id": "c", **small},
        {"task_id": "huge", "requested_cpu": 64, "requested_memory": 8192},
        {"task_id": "huge", "requested_cpu": 64, "requested_memory": 8192},  # refused once, not re-decided
    )
    result = run("simulate", *files(tmp_path, trace), "--json", "--strategy", "least_loaded")
    assert result.exit_code == 0, result.output
    out = [json.loads(x) for x in result.output.splitlines()]
    got = [(x["task_id"], x["node"] is not None, x["reason"], x["message"].split(":")[0]) for x in out[:-1]]
    assert got == [
        ("a", True, None, "cpu-1 by least_loaded; 3/3 nodes fit"),
        ("a", True, None, "duplicate"),
        (
            "a",
            False,
            "conflict",
            "task id already exists with a different request; the original is unchanged",
        ),
        ("a", True, None, "released from cpu-1"),
        ("a", False, None, "duplicate"),
        ("c", False, None, "cancelled"),
        ("c", False, "cancelled", "released before it arrived"),
        ("huge", False, "insufficient_resources", "0/3 nodes fit"),
        ("huge", False, None, "duplicate"),
    ]
    summary = out[-1]["summary"]
    assert (summary["placed"], summary["released"], summary["nodes_used"]) == (1, 1, 0)
    assert summary["rejected_by_reason"] == {"conflict": 1, "cancelled": 1, "insufficient_resources": 1}


@pytest.mark.parametrize("compare", [False, True], ids=["single", "compare"])
def test_piped_tables_are_whole_not_cut_to_80_columns(tmp_path: Path, compare: bool) -> None:
    """Piped (a file, ``| less``, a CI log), rich assumed 80 columns: the pool table cut the figures
    to ``██░░░…`` and ``cpu 75.…``; every other table of the CLI is printed whole when piped."""
    config = tmp_path / "config.yaml"
    config.write_text("strategy: least_loaded\n")
    env = {"SCHEDULER_CONFIG": str(config), "COLUMNS": None, "LINES": None}
    args = ["simulate", *files(tmp_path, FRAG_TRACE)]
    args += ["--compare", "least_loaded,best_fit,cpu,memory,hybrid"] if compare else []
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    if compare:
        assert "default: stranded memory" in result.output
    else:
        assert "cpu 75.0% mem 6.2% (line 4)" in result.output


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("best_fit,nope", "unknown strategy 'nope'; valid: least_loaded, best_fit"),
        ("best_fit,,cpu", "expected strategy names separated by commas"),
        ("best_fit,best_fit", "'best_fit' given twice"),
        ("", "expected strategy names separated by commas"),
    ],
)
def test_compare_names_the_bad_value(run: Run, tmp_path: Path, value: str, words: str) -> None:
    result = run("simulate", *files(tmp_path, FRAG_TRACE), "--compare", value)
    assert result.exit_code == 2
    assert "--compare" in result.output and words in result.output, result.output


def test_compare_and_strategy_together_are_refused(run: Run, tmp_path: Path) -> None:
    result = run("simulate", *files(tmp_path, FRAG_TRACE), "--compare", "cpu", "--strategy", "cpu")
    assert result.exit_code == 2 and "either --strategy or --compare" in result.output


def test_report_to_an_unwritable_path_names_it(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "r.html"
    result = run("simulate", *files(tmp_path, FRAG_TRACE), "--report", str(target))
    assert result.exit_code != 0 and str(target) in str(result.exception) + result.output


def external_resources(page: str) -> list[str]:
    """Every script, stylesheet or image the page would fetch (the inlined library's text is not parsed)."""
    found: list[str] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            for key, value in attrs:
                if key in ("src", "href") and value and tag in ("script", "link", "img", "iframe"):
                    found.append(value)

    Links().feed(page)
    return found


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "headless Chromium not found; install it with: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_report_renders_its_plots_in_headless_chromium(run: Run, tmp_path: Path) -> None:
    """The page is self-contained (no http(s) fetch) and, once Chromium ran plotly.js, holds three plots."""
    browser = chromium()
    report = tmp_path / "report.html"
    trace = GPU_TRACE + FRAG_TRACE.replace('"big', '"b2-').replace('"mid"', '"mid2"')
    result = run(
        "simulate", *files(tmp_path, trace), "--compare", "best_fit,least_loaded", "--report", str(report)
    )
    assert result.exit_code == 0, result.output
    assert external_resources(report.read_text()) == []
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
             "--window-size=1280,1800", "--virtual-time-budget=10000"]  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    html = dom.stdout
    for div in ("utilization", "node-fill", "rejections"):
        assert f'id="{div}"' in html
    # plotly.js draws each plot as an <svg class="main-svg">; unrendered divs have none.
    assert html.count('class="main-svg"') >= 3, html[:2000]
    assert "Fleet utilization along the trace" in html and "How full the nodes end" in html
    assert "Rejections by reason" in html and "best_fit cpu" in html and "least_loaded cpu" in html
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "simulate-report.png"
    taken = subprocess.run(
        [browser, *flags, f"--user-data-dir={tmp_path / 'p2'}", f"--screenshot={shot}", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert taken.returncode == 0 and shot.stat().st_size > 20_000, taken.stderr[-2000:]


def test_a_trace_is_read_line_by_line_like_a_request_file(tmp_path: Path) -> None:
    """A byte order mark and CR LF endings lose no line; a line that is not UTF-8 is named, not the file."""
    from scheduler.simulate import TraceError, read_trace

    good = tmp_path / "bom.jsonl"
    good.write_bytes(
        b"\xef\xbb\xbf"
        + b'{"task_id": "a", "requested_cpu": 1, "requested_memory": 512}\r\n'
        + b'{"task_id": "b", "requested_cpu": 2, "requested_memory": 512}\r\n'
    )
    assert [item.task_id for item in read_trace(good)] == ["a", "b"]  # type: ignore[union-attr]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"task_id": "a", "requested_cpu": 1, "requested_memory": 512}\n{"task_id": "\xff"}\n')
    with pytest.raises(TraceError, match=r"line 2: not UTF-8 \(byte 0xff"):
        read_trace(bad)
