"""The batch histogram exposes what prometheus_client's Histogram exposes for the same values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.metrics.batch_histogram import BatchHistogram

BOUNDS = st.lists(
    st.floats(min_value=1e-6, max_value=1e3, allow_nan=False), min_size=1, max_size=12, unique=True
).map(sorted)
VALUES = st.lists(st.floats(min_value=-10.0, max_value=2e3, allow_nan=False), max_size=200)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


@settings(max_examples=200, deadline=None)
@given(bounds=BOUNDS, batches=st.lists(VALUES, max_size=5))
def test_same_buckets_count_and_sum_as_the_library_histogram(
    bounds: list[float], batches: list[list[float]]
) -> None:
    reference, batched = CollectorRegistry(), CollectorRegistry()
    library = Histogram("h_seconds", "doc", buckets=bounds, registry=reference)
    ours = BatchHistogram("h_seconds", "doc", bounds, batched)
    for i, batch in enumerate(batches):
        for value in batch:
            library.observe(value)
            if i % 2:  # one value at a time (observe's own path) on odd batches, the batch at once on even
                ours.observe(value)
        if not i % 2:
            ours.observe_many(batch if i % 4 else iter(batch))  # a list, and any iterable
    expected, got = _samples(reference), _samples(batched)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0] == "h_seconds_sum":
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9)
        else:
            assert got[key] == value, key


def test_non_finite_values_are_left_out_and_the_sum_stays_a_number() -> None:
    registry = CollectorRegistry()
    ours = BatchHistogram("h_seconds", "doc", [0.1, 1.0], registry)
    ours.observe_many([0.05, math.nan, math.inf, -math.inf, 2.0])
    ours.observe(1.0)  # on a bound: counted in that bound's bucket (le is "at or below")
    samples = _samples(registry)
    assert samples[("h_seconds_count", "")] == 3
    assert samples[("h_seconds_sum", "")] == pytest.approx(3.05)
    assert samples[("h_seconds_bucket", "0.1")] == 1
    assert samples[("h_seconds_bucket", "1.0")] == 2
    assert samples[("h_seconds_bucket", "+Inf")] == 3
