"""Prometheus metrics, on a registry of their own per app (tests build many apps in one process).

Labels stay bounded: `endpoint` is the route template (never the raw path), `model` a loaded
model's name or "" (requests that name no known model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        self.requests = Counter("made_requests", "HTTP requests answered", ["endpoint", "model", "status"], registry=r)
        self.latency = self._per_model("made_request_duration_seconds", "time to answer a request", LATENCY_BUCKETS)
        self.errors = Counter(
            "made_errors", "requests answered with an error status", ["endpoint", "model", "type"], registry=r
        )
        # Requests being served: a plain count the request middleware keeps (on the event loop),
        # read at each scrape; no lock taken twice a request.
        self.requests_in_flight = 0
        self.in_flight = Gauge("made_requests_in_flight", "requests being served", registry=r)
        self.in_flight.set_function(lambda: self.requests_in_flight)
        self.request_rows = self._per_model("made_request_rows", "rows (or samples) in one request", SIZE_BUCKETS)
        self.batch_rows = self._per_model("made_batch_rows", "rows in one merged engine call", SIZE_BUCKETS)
        self.batch_requests = self._per_model("made_batch_requests", "requests merged in one engine call", SIZE_BUCKETS)
        self.engine_latency = self._per_model(
            "made_engine_duration_seconds", "time of one engine call", LATENCY_BUCKETS
        )
        self.endpoint_requests = Gauge(
            "made_endpoint_requests",
            "requests an endpoint holds (waiting for "
            "an engine thread, batching or running); at MADE_MAX_QUEUE it "
            "answers 503",
            ["endpoint"],
            registry=r,
        )
        self.overloaded = Counter(
            "made_overloaded", "requests refused with 503 at MADE_MAX_QUEUE", ["endpoint"], registry=r
        )
        self.abandoned = Counter(
            "made_abandoned",
            "engine calls stopped at a checkpoint after their request timed out, its client "
            "disconnected or the server shut down",
            ["endpoint"],
            registry=r,
        )
        self.disconnected = Counter(
            "made_disconnected",
            "requests whose client disconnected before their answer: cancelled, their work not "
            "started dropped (a running engine call of their own stops at its next checkpoint, "
            "made_abandoned_total)",
            ["endpoint"],
            registry=r,
        )
        self.models_loaded = Gauge("made_models_loaded", "models loaded and served", registry=r)
        self.model_info = Gauge(
            "made_model_info", "1 for each loaded model version", ["model", "version", "providers"], registry=r
        )
        self.reloads = Counter(
            "made_model_reloads", "versions a reload loaded or refused", ["model", "outcome"], registry=r
        )
        self.reload_failures = Counter(
            "made_reload_errors", "reloads that failed as a whole (store unreadable, models not loaded)", registry=r
        )

    def _per_model(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        """A histogram labelled by endpoint and model, on this app's registry."""
        return Histogram(name, documentation, ["endpoint", "model"], buckets=buckets, registry=self.registry)

    def child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), remembered: labels() costs more than the observation."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_request(self, endpoint: str, model: str, status: int, seconds: float, error_type: str | None) -> None:
        key = (endpoint, model, status)
        pair = self._request_children.get(key)
        if pair is None:  # one lookup a request, not two with their label tuples
            pair = self._request_children[key] = (
                self.child(self.requests, endpoint, model, str(status)),
                self.child(self.latency, endpoint, model),
            )
        pair[0].inc()
        pair[1].observe(seconds)
        if status >= 400:
            self.child(self.errors, endpoint, model, error_type or "http_error").inc()

    def track_endpoint_requests(self, endpoint: str, count: Callable[[], float]) -> None:
        """made_endpoint_requests{endpoint} reads count() at each scrape (the scheduler's own
        count of what the endpoint holds), rather than being moved twice a request."""
        self.child(self.endpoint_requests, endpoint).set_function(count)

    def observe_rows(self, endpoint: str, model: str, rows: int) -> None:
        self.child(self.request_rows, endpoint, model).observe(rows)

    def observe_batch(self, endpoint: str, model: str, rows: int, requests: int, seconds: float) -> None:
        self.child(self.batch_rows, endpoint, model).observe(rows)
        self.child(self.batch_requests, endpoint, model).observe(requests)
        self.child(self.engine_latency, endpoint, model).observe(seconds)

    def set_models(self, models: Iterable[tuple[str, str, str]]) -> None:
        """made_model_info for exactly these (name, version, providers): a replaced version goes."""
        self.model_info.clear()
        count = 0
        for name, version, providers in models:
            self.model_info.labels(name, version, providers).set(1)
            count += 1
        self.models_loaded.set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
