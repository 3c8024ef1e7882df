"""The chart's resource-model values: ``config.allocation_ratios``, ``.reserved``, ``.spread_max_skew``.

Why: the chart is how production sets the node defaults of the resource
model; a value set there must reach the worker's settings unchanged, and a
value the worker would refuse (a ratio <= 0 or > 100, a negative reserve)
must already be refused by ``helm template`` / ``helm install``, naming the
key, instead of crash-looping the pods.
"""

# ruff: noqa: F811  (the session fixtures of test_deploy are imported, then requested by name)
from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.fleet import CapacityDefaults
from tests.test_deploy import Tools, _helm_template, clean_env, load_as_pod, render, tools  # noqa: F401


def test_chart_resource_defaults_reach_the_worker(
    tools: Tools,
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
) -> None:
    objs = render(
        tools,
        "--set", "config.allocation_ratios.cpu=4",
        "--set-json", "config.allocation_ratios.memory=1.5",  # --set would pass 1.5 as a string
        "--set", "config.reserved.memory=16384",
        "--set", "config.spread_max_skew=2",
    )  # fmt: skip
    settings = load_as_pod(objs, tmp_path, clean_env)
    assert settings.capacity_defaults() == CapacityDefaults(4.0, 1.5, 1.0, 0, 16384, 0)
    assert settings.spread_max_skew == 2


def test_chart_defaults_are_the_neutral_ones(
    tools: Tools, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    settings = load_as_pod(render(tools), tmp_path, clean_env)
    assert settings.capacity_defaults() == CapacityDefaults()
    assert settings.spread_max_skew == 1


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("config.allocation_ratios.cpu=0", "/config/allocation_ratios/cpu"),
        ("config.allocation_ratios.memory=101", "/config/allocation_ratios/memory"),
        ("config.reserved.disk=-1", "/config/reserved/disk"),
        ("config.reserved.gpu=1", "/config/reserved"),
        ("config.spread_max_skew=0", "/config/spread_max_skew"),
    ],
)
def test_chart_refuses_bad_resource_defaults_naming_the_key(tools: Tools, value: str, where: str) -> None:
    result = _helm_template(tools.helm, ("--set", value))
    assert result.returncode != 0
    assert where in result.stderr, result.stderr
