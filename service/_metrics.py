"""Prometheus metrics of one app (its own registry, so several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
LOG_DET_BUCKETS = tuple(float(value) for value in range(-40, 41, 4))
MAHALANOBIS_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 50.0)


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
        self.queue_duration = Histogram(
            "covserve_queue_duration_seconds",
            "Time a request waited for an inference worker",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
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
        self.predicted_log_det = Histogram(
            "covserve_predicted_log_det",
            "log det of each predicted covariance (raw target units): uncertainty drift",
            ["model"],
            buckets=LOG_DET_BUCKETS,
            registry=self.registry,
        )
        self.input_mahalanobis = Histogram(
            "covserve_input_mahalanobis",
            "Mahalanobis distance of each input row to the training inputs: out-of-distribution monitor",
            ["model"],
            buckets=MAHALANOBIS_BUCKETS,
            registry=self.registry,
        )
