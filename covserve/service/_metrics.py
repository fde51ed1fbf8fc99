"""Prometheus metrics of one app (its own registry, so several apps can live in one test process)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = ["ArrayHistogram", "ServiceMetrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
LOG_DET_BUCKETS = tuple(float(value) for value in range(-40, 41, 4))
MAHALANOBIS_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 50.0)


class ArrayHistogram(Collector):
    """A histogram with one label that takes a whole array per call: one numpy pass, not one lock per value.

    The exposition is that of :class:`prometheus_client.Histogram` (``_bucket{le}``, ``_count``, ``_sum``),
    except that ``_sum`` is kept when a bucket bound is negative (prometheus_client drops it there; a
    dashboard's mean log det needs it).
    Non-finite values are not counted (the covariances they would come from are refused before this).
    """

    def __init__(
        self, name: str, documentation: str, label: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._upper = np.asarray([*buckets, math.inf], dtype=np.float64)
        self._at_most: dict[str, NDArray[np.int64]] = {}
        """Per label value, how many values were at most each bound (Prometheus' cumulative buckets)."""
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, label_value: str, values: NDArray[np.float64]) -> None:
        """Count every finite element of ``values`` (any shape) under ``label_value``.

        Counts by comparison with every bound (``O(values × buckets)``) rather than ``np.searchsorted`` and
        ``np.bincount``: those release the GIL on every call, however small, and on a server whose inference
        threads hold it each call then waits up to the interpreter's switch interval to get it back.
        """
        finite = values[np.isfinite(values)].reshape(-1, 1)
        at_most = (finite <= self._upper).sum(axis=0)
        total = float(finite.sum())
        with self._lock:
            self._at_most[label_value] = self._at_most.get(label_value, 0) + at_most
            self._sums[label_value] = self._sums.get(label_value, 0.0) + total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=[self._label])]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label])
        with self._lock:
            snapshot = {key: (counts.copy(), self._sums[key]) for key, counts in self._at_most.items()}
        for label_value, (cumulative, total) in sorted(snapshot.items()):
            buckets = [
                ("+Inf" if upper == math.inf else repr(float(upper)), float(count))
                for upper, count in zip(self._upper, cumulative, strict=True)
            ]
            family.add_metric([label_value], buckets, None)
            labels = {self._label: label_value}
            family.samples.append(Sample(f"{self._name}_count", labels, float(cumulative[-1])))
            family.samples.append(Sample(f"{self._name}_sum", labels, total))
        return [family]


class ServiceMetrics:
    """The ``covserve_*`` metric families; durations in seconds, histograms throughout."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "covserve_requests",
            "Requests answered",
            ["model", "version", "route", "code"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "covserve_request_duration_seconds",
            "Wall time from request received to response ready",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_duration = ArrayHistogram(
            "covserve_queue_duration_seconds",
            "Time a request waited for an inference worker",
            "model",
            LATENCY_BUCKETS,
            self.registry,
        )
        self.inference_duration = Histogram(
            "covserve_inference_duration_seconds",
            "ONNX Runtime session.run time",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "covserve_batch_size",
            "Rows per session.run",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "covserve_inflight_requests", "Requests being processed", registry=self.registry
        )
        self.model_info = Gauge(
            "covserve_model_info",
            "Loaded model versions (value 1)",
            ["model", "version", "provider"],
            registry=self.registry,
        )
        self.predicted_log_det = ArrayHistogram(
            "covserve_predicted_log_det",
            "log det of each predicted covariance (raw target units): uncertainty drift",
            "model",
            LOG_DET_BUCKETS,
            self.registry,
        )
        self.input_mahalanobis = ArrayHistogram(
            "covserve_input_mahalanobis",
            "Mahalanobis distance of each input row to the training inputs: out-of-distribution monitor",
            "model",
            MAHALANOBIS_BUCKETS,
            self.registry,
        )
