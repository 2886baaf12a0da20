"""Prometheus metrics of the HTTP API, in a registry of their own (one per app, so tests and several
apps in one process do not collide).

- ``recfeast_request_seconds{endpoint, code}``: request latency histogram (seconds).
- ``recfeast_stage_seconds{stage}``: time in ``features``, ``retrieve``, ``rank``, ``embed_query``.
- ``recfeast_query_cache_total{result}``: query-embedding cache ``hit``/``miss``.
- ``recfeast_store_errors_total{store}``: online store reads that failed.
- ``recfeast_rejected_requests_total{endpoint, code}``: 4xx answers.
"""

from __future__ import annotations

STAGES = ("features", "retrieve", "rank", "embed_query")
BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """The API's collectors; :meth:`render` gives the text exposition format for ``/metrics``."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.request = Histogram("recfeast_request_seconds", "HTTP request latency", ["endpoint", "code"],
                                 buckets=BUCKETS, registry=self.registry)
        self.stage = Histogram("recfeast_stage_seconds", "Time per serving stage", ["stage"], buckets=BUCKETS,
                               registry=self.registry)
        self.cache = Counter("recfeast_query_cache", "Query-embedding cache lookups", ["result"],
                             registry=self.registry)
        self.store_errors = Counter("recfeast_store_errors", "Failed online store reads", ["store"],
                                    registry=self.registry)
        self.rejected = Counter("recfeast_rejected_requests", "Requests answered 4xx", ["endpoint", "code"],
                                registry=self.registry)
        # Labelled collectors export no sample until a label set is first used; create the known ones
        # now so that dashboards and rate() see 0 from the start instead of "no data".
        for result in ("hit", "miss"):
            self.cache.labels(result)
        for stage in STAGES:
            self.stage.labels(stage)

    def init_store(self, store: str) -> None:
        """Export ``recfeast_store_errors_total{store=...}`` at 0 for the served store kind."""
        self.store_errors.labels(store)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def cache_lookup(self, hit: bool) -> None:
        self.cache.labels("hit" if hit else "miss").inc()

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` of the exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
