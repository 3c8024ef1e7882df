"""The resource model where an operator meets it: ``nodes import/list``, ``simulate`` and ``submit`` flags.

Why: the fields are only as good as their front doors. A fleet file with a
bad device count or ratio must be refused as a whole with the node and the
field named; ``nodes list`` must show raw and effective capacity and flag a
node whose ratio was lowered under its VMs; ``simulate`` must read the new
fields from both files and explain rejections with the new labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import scheduler.cli.db
import scheduler.cli.nodes
import scheduler.cli.simulate
import scheduler.cli.submit  # noqa: F401  (registers the commands)
from scheduler.cli.common import CliError, cli
from scheduler.models import SchedulingRequest
from scheduler.store import Placement, Store

Run = Callable[..., Result]

FLEET = """
nodes:
  - {name: gpu-1, ip: 10.0.0.1, cpu: 16, memory: 65536, disk: 100, zone: az1, resources: {gpu: 8},
     reserved: {cpu: 2, memory: 8192}, cpu_allocation_ratio: 2.0}
  - {name: gpu-2, ip: 10.0.0.2, cpu: 16, memory: 65536, disk: 100, zone: az2, resources: {gpu: 4, nvme: 2}}
  - {name: cpu-1, ip: 10.0.0.3, cpu: 16, memory: 65536, disk: 100, zone: az3, tags: [V100M16]}
"""


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.yaml"
    config.write_text("allocation_ratios: {memory: 1.5}\nreserved: {disk: 10}\n")
    return {"DATABASE_URL": db_url, "SCHEDULER_CONFIG": str(config), "COLUMNS": "200"}


@pytest.fixture
def run(env: dict[str, str]) -> Iterator[Run]:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, list(args), env=env, catch_exceptions=True)

    yield invoke


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("resources: {gpu: 0}", "nodes[0] (bad): resources: gpu: the count must be >= 1, got 0"),
        ("resources: {gpu: -2}", "nodes[0] (bad): resources: gpu: the count must be >= 1, got -2"),
        ("resources: {GPU: 1}", "nodes[0] (bad): resources: 'GPU': a resource name is"),
        ("cpu_allocation_ratio: 0", "nodes[0] (bad): cpu_allocation_ratio: Input should be greater than 0"),
        (
            "memory_allocation_ratio: 101",
            "nodes[0] (bad): memory_allocation_ratio: Input should be less than",
        ),
        ("reserved: {cpu: 17}", "nodes[0] (bad): reserved: cpu: 17 is larger than the capacity (cpu: 16)"),
    ],
)
def test_nodes_import_refuses_bad_resource_fields_by_node_and_field(
    run: Run, tmp_path: Path, entry: str, words: str
) -> None:
    bad = f"nodes:\n  - {{name: bad, ip: 10.0.0.9, cpu: 16, memory: 1024, {entry}}}\n"
    result = run("nodes", "import", write(tmp_path, "bad.yaml", bad))
    assert result.exit_code != 0 and isinstance(result.exception, CliError)
    assert words in str(result.exception), str(result.exception)
    assert "nothing imported" in str(result.exception)


def test_nodes_list_shows_effective_capacity_devices_and_flags_overcommit(
    run: Run, tmp_path: Path, db_url: str
) -> None:
    assert run("nodes", "import", write(tmp_path, "fleet.yaml", FLEET)).exit_code == 0
    with Store.from_url(db_url) as store:
        req = SchedulingRequest(
            task_id="t1", requested_cpu=20, requested_memory=1024, requested_resources={"gpu": 3}
        )
        store.commit([Placement(req, "gpu-1", "10.0.0.1", "least_loaded", "placed", 1)], epoch=1)
    lines = [json.loads(x) for x in run("nodes", "list", "--json").output.splitlines()]
    gpu1 = next(x for x in lines if x["name"] == "gpu-1")
    # cpu floor((16 - 2) x 2) = 28; memory floor((65536 - 8192) x 1.5) = 86016 (the configured ratio);
    # disk 100 - 10 (the configured reserve).
    assert gpu1["effective"] == {"cpu": 28, "memory": 86016, "disk": 90, "vms": 100000, "gpu": 8}
    assert gpu1["allocated"] == {"cpu": 20, "memory": 1024, "disk": 0, "vms": 1, "gpu": 3}
    assert (gpu1["cpu"], gpu1["resources"], gpu1["cpu_allocation_ratio"]) == (16, {"gpu": 8}, 2.0)
    assert gpu1["overcommitted"] is False
    table = run("nodes", "list").output
    assert "20/28 (raw 16)" in table and "gpu 3/8" in table and "overcommitted" not in table

    # The ratio goes back to 1.0 under the running VM: accepted, and flagged.
    lowered = FLEET.replace("cpu_allocation_ratio: 2.0", "cpu_allocation_ratio: 1.0")
    assert run("nodes", "import", write(tmp_path, "fleet2.yaml", lowered)).exit_code == 0
    lines = [json.loads(x) for x in run("nodes", "list", "--json").output.splitlines()]
    gpu1 = next(x for x in lines if x["name"] == "gpu-1")
    assert gpu1["effective"]["cpu"] == 14 and gpu1["overcommitted"] is True
    assert "overcommitted(cpu)" in run("nodes", "list").output


def test_simulate_reads_new_fields_and_explains_with_new_labels(run: Run, tmp_path: Path) -> None:
    trace = "\n".join(
        json.dumps(x)
        for x in [
            {"task_id": "a", "requested_cpu": 1, "requested_memory": 1, "requested_resources": {"gpu": 4},
             "spread_group": "web"},
            {"task_id": "b", "requested_cpu": 1, "requested_memory": 1, "requested_resources": {"gpu": 4},
             "spread_group": "web"},
            {"task_id": "c", "requested_cpu": 1, "requested_memory": 1, "requested_resources": {"tpu": 1}},
            {"task_id": "d", "requested_cpu": 1, "requested_memory": 1, "required_tags": ["V100M16|V100M32"]},
            {"task_id": "e", "requested_cpu": 1, "requested_memory": 1, "forbidden_tags": ["V100M16"],
             "anti_affinity_group": "g", "anti_affinity_mode": "soft"},
            {"task_id": "f", "requested_cpu": 40, "requested_memory": 1},
        ]
    )  # fmt: skip
    # A spreading strategy: best_fit packs devices and would give a gpu-2's four GPUs exactly, leaving
    # b no node but gpu-1 before the zone spread is even asked.
    result = run(
        "simulate", "--nodes", write(tmp_path, "f.yaml", FLEET),
        "--requests", write(tmp_path, "r.jsonl", trace), "--json", "--strategy", "least_loaded",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = [json.loads(x) for x in result.output.splitlines()]
    by_id = {x["task_id"]: x for x in out[:-1]}
    assert by_id["a"]["node"] in {"gpu-1", "gpu-2"}
    assert by_id["b"]["node"] in {"gpu-1", "gpu-2"} - {by_id["a"]["node"]}  # the other zone
    assert "zone spread" in by_id["b"]["message"]
    assert by_id["c"]["node"] is None and by_id["c"]["message"] == "0/3 nodes fit: 3 no tpu"
    assert by_id["d"]["node"] == "cpu-1"
    assert by_id["e"]["node"] in {"gpu-1", "gpu-2"} and "1 forbidden tags" in by_id["e"]["message"]
    # 40 vCPUs: only gpu-1 has them, floor((16 - 2) x 2) = 28 < 40 though; nobody fits.
    assert by_id["f"]["node"] is None and "3 insufficient cpu" in by_id["f"]["message"]
    assert out[-1]["summary"]["utilization"]["default"]["gpu"] == 8 / 12


def test_simulate_reports_a_bad_trace_line_by_field(run: Run, tmp_path: Path) -> None:
    trace = '{"task_id": "a", "requested_cpu": 1, "requested_memory": 1, "required_tags": ["gpu|"]}\n'
    result = run(
        "simulate",
        "--nodes",
        write(tmp_path, "f.yaml", FLEET),
        "--requests",
        write(tmp_path, "r.jsonl", trace),
    )
    assert isinstance(result.exception, CliError)
    assert "line 1: required_tags.0: 'gpu|' has an empty alternative" in str(result.exception)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--resource", "gpu"], "--resource 'gpu': expected NAME=COUNT"),
        (["--resource", "gpu=two"], "--resource 'gpu=two': the count must be an integer"),
        (["--resource", "gpu=1", "--resource", "gpu=2"], "--resource 'gpu' given twice"),
        (["--resource", "gpu=0"], "requested_resources: gpu: the count must be >= 1"),
        (["--tag", "|b"], "required_tags.0: '|b' has an empty alternative"),
        (["--spread-group", "web", "--spread-mode", "sometimes"], "'sometimes' is not one of 'hard', 'soft'"),
    ],
)
def test_submit_flags_for_the_resource_model_name_the_bad_one(run: Run, flags: list[str], words: str) -> None:
    result = run("submit", "--cpu", "1", "--memory", "1", *flags)
    assert result.exit_code != 0
    assert words in (str(result.exception) + result.output), (result.exception, result.output)
