"""Prometheus metrics and the two signals that a deployed model is going wrong without any errors:
falling confidence and inputs that no longer look like the data it was exported with (drift).

Drift is the standardised mean shift of a rolling window of embeddings against the reference saved at
export: z_d = (window mean_d - reference mean_d) / reference std_d, drift = sqrt(mean_d z_d^2), in units
of the reference spread. In-distribution traffic gives about 1/sqrt(window); a value near or above 1 means
the average input moved by a whole standard deviation.

With several worker processes (`PROMETHEUS_MULTIPROC_DIR` set) prometheus_client keeps every value in
files of that folder and `/metrics` adds them up, whichever worker answers: counters and histograms sum,
each gauge combines as its `multiprocess_mode` says (live gauges forget a worker that stopped), and the
process figures of every worker carry its `pid` label (`ProcessCollector` alone would only see the one
that answers the scrape).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from dinotune.serve.environment import multiprocess_dir
from dinotune.serve.runtime import Reference

log = logging.getLogger("dinotune.serve")

PROCESS_FIGURES = (
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
)
MEDIA_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class Monitor:
    """All metrics of one app in its own registry (two apps in one process do not collide)."""

    def __init__(
        self,
        *,
        confidence_window: int = 500,
        low_confidence: float = 0.5,
        min_samples: int = 50,
        drift_window: int = 500,
        drift_threshold: float = 0.5,
        reference: Reference | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.shared_dir = multiprocess_dir()
        self._define_metrics(self.registry)
        self._process = ProcessCollector(registry=None)
        if self.shared_dir is None:  # one process: the standard collectors, read at each scrape
            self.registry.register(self._process)
            self.registry.register(PLATFORM_COLLECTOR)
        self.low_confidence, self.min_samples = low_confidence, min_samples
        self.drift_threshold, self.reference = drift_threshold, reference
        self._confidences: deque[float] = deque(maxlen=confidence_window)
        self._embeddings: deque[np.ndarray] = deque(maxlen=drift_window)
        self._embedding_sum: np.ndarray | None = None
        self._lock = threading.Lock()
        self._alerts: dict[str, bool] = {"confidence": False, "drift": False}
        self._drift_score = float("nan")
        self.drift.set(float("nan"))
        self.mean_confidence.set(float("nan"))

    def _define_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "dinotune_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.errors = Counter(
            "dinotune_errors", "Error responses (status >= 400; not /ready's 503 while loading)", ["code"], registry=r
        )
        self.latency = Histogram(
            "dinotune_request_latency_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("dinotune_batch_size", "Images per model call", buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram(
            "dinotune_inference_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.confidence = Histogram(
            "dinotune_confidence", "Top-1 probability per image", buckets=CONFIDENCE_BUCKETS, registry=r
        )
        latest, worst = {"multiprocess_mode": "livemostrecent"}, {"multiprocess_mode": "livemax"}
        self.mean_confidence = Gauge(
            "dinotune_rolling_mean_confidence", "Mean top-1 probability over the last images", registry=r, **latest
        )
        self.low_confidence_alert = Gauge(
            "dinotune_low_confidence_alert", "1 while the rolling mean confidence is below the threshold", registry=r,
            **worst,
        )  # fmt: skip
        self.drift = Gauge(
            "dinotune_drift_score", "Standardised mean shift of recent embeddings (NaN: no reference)", registry=r,
            **latest,
        )  # fmt: skip
        self.drift_alert = Gauge(
            "dinotune_drift_alert", "1 while the drift score is above the threshold", registry=r, **worst
        )
        self.queue = Gauge(
            "dinotune_queue_images", "Images admitted and not yet answered", registry=r, multiprocess_mode="livesum"
        )
        self.ready = Gauge(
            "dinotune_model_ready",
            "1 once the model is loaded (by every worker)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.model_info = Gauge(
            "dinotune_model_info", "The served model: 1, with its name, dinotune version, task, runtime and sha256",
            ["name", "version", "task", "runtime", "checksum"], registry=r, **worst,
        )  # fmt: skip
        self._process_gauges = {
            name: Gauge(name, "Per worker (pid label)", registry=r, multiprocess_mode="liveall")
            for name in (PROCESS_FIGURES if self.shared_dir is not None else ())
        }

    def set_model(self, name: str, version: str, task: str, runtime: str, checksum: str) -> None:
        """Mark the model loaded: dinotune_model_info{...} = 1 and dinotune_model_ready = 1."""
        self.model_info.labels(name, version, task, runtime, checksum).set(1)
        self.ready.set(1)

    def refresh_process(self) -> None:
        """Copy this worker's process figures into its shared gauges (multiprocess mode only)."""
        if not self._process_gauges:
            return
        for family in self._process.collect():
            for sample in family.samples:
                gauge = self._process_gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)

    def exposition(self) -> bytes:
        """The text `/metrics` answers: this registry, or every worker's values in multiprocess mode."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        self.refresh_process()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.shared_dir))
        registry.register(PLATFORM_COLLECTOR)
        return generate_latest(registry)

    def close(self) -> None:
        """A worker that stops removes its live gauges from the shared folder."""
        if self.shared_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), str(self.shared_dir))

    def set_reference(self, reference: Reference | None) -> None:
        self.reference = reference

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400 and not (endpoint == "/ready" and code == 503):  # "not ready yet" is a state, not an error
            self.errors.labels(str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def observe(self, probabilities: np.ndarray, embedding: np.ndarray) -> None:
        """One served image: its probabilities and its embedding."""
        top1 = float(probabilities.max())
        self.confidence.observe(top1)
        with self._lock:
            self._confidences.append(top1)
            mean = sum(self._confidences) / len(self._confidences)
            self._update_drift(np.asarray(embedding, np.float64))
        self.mean_confidence.set(mean)
        if len(self._confidences) >= self.min_samples:
            self._set_alert(
                "confidence",
                self.low_confidence_alert,
                mean < self.low_confidence,
                "rolling mean confidence %.3f over the last %d images is below %.3f",
                mean,
                len(self._confidences),
                self.low_confidence,
            )

    def _update_drift(self, embedding: np.ndarray) -> None:
        if self.reference is None or embedding.shape != self.reference.mean.shape:
            return
        if self._embedding_sum is None:
            self._embedding_sum = np.zeros_like(embedding)
        if len(self._embeddings) == self._embeddings.maxlen:
            self._embedding_sum -= self._embeddings[0]
        self._embeddings.append(embedding)
        self._embedding_sum += embedding
        n = len(self._embeddings)
        z = (self._embedding_sum / n - self.reference.mean) / np.maximum(self.reference.std, 1e-6)
        score = float(np.sqrt(np.mean(z * z)))
        self._drift_score = score
        self.drift.set(score)
        if n >= self.min_samples:
            self._set_alert(
                "drift",
                self.drift_alert,
                score > self.drift_threshold,
                "input drift %.3f over the last %d images exceeds %.3f (reference: %d export images)",
                score,
                n,
                self.drift_threshold,
                self.reference.n,
            )

    def _set_alert(self, name: str, gauge: Gauge, on: bool, message: str, *args: object) -> None:
        """Log once when an alert turns on (and once when it clears), not on every request."""
        was_on, self._alerts[name] = self._alerts[name], on
        gauge.set(1.0 if on else 0.0)
        if on and not was_on:
            log.warning(message, *args)
        elif was_on and not on:
            log.info("alert cleared: " + message, *args)

    def snapshot(self) -> dict[str, float | int | None]:
        """The rolling figures, for /info and tests."""
        with self._lock:
            n = len(self._confidences)
            mean = sum(self._confidences) / n if n else None
            drift = self._drift_score
        return {
            "images": n,
            "rolling_mean_confidence": mean,
            "low_confidence_alert": self._alerts["confidence"],
            "drift_score": None if np.isnan(drift) else drift,
            "drift_alert": self._alerts["drift"],
        }
