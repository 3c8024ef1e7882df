"""A Prometheus histogram observed one batch of values at a time.

Why not ``prometheus_client.Histogram``: the worker observes a decision
time and a publish-to-commit latency for every message, and the library's
``observe`` walks the bucket bounds in Python and takes two locks per
value, which made the metrics several percent of plan + commit. Here a
committed batch costs one ``numpy.searchsorted``, one ``bincount`` and one
lock, and a scrape builds the same exposition (``_bucket`` with ``le``
labels formatted as the library formats them, ``_count``, ``_sum``)
through the library's public ``HistogramMetricFamily``.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class BatchHistogram(Collector):
    """An unlabelled histogram with :meth:`observe_many`; registered on ``registry`` when built."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = sorted({float(b) for b in buckets if not math.isinf(float(b))})
        self.name = name
        self.documentation = documentation
        self._bounds = np.array(bounds, dtype=np.float64)
        self._bound_list = bounds
        self._labels = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]  # untyped in the library
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last one: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        """One value, without numpy: a group's size and its commit time are observed once per group,
        and numpy's fixed cost per call (about 10 us) was most of what a small group's metrics cost."""
        if not math.isfinite(value):
            return
        index = bisect.bisect_left(self._bound_list, value)  # numpy's searchsorted, side="left"
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        """Count every finite value into the bucket whose bound is the first at or above it.

        Non-finite values are left out (a NaN or an infinity has no bucket
        and would turn the sum into NaN for good).
        """
        if isinstance(values, np.ndarray):
            data = values.astype(np.float64, copy=False)
        elif isinstance(values, list | tuple):
            data = np.array(values, dtype=np.float64)  # a list converts at once, not item by item
        else:
            data = np.fromiter(values, dtype=np.float64)
        data = data[np.isfinite(data)]
        if not data.size:
            return
        added = np.bincount(np.searchsorted(self._bounds, data, side="left"), minlength=len(self._counts))
        total = float(data.sum())
        with self._lock:
            self._counts += added
            self._sum += total

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = self._counts.copy(), self._sum
        cumulative = np.cumsum(counts).tolist()
        buckets = [(label, float(c)) for label, c in zip(self._labels, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family
