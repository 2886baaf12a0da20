"""Prometheus metrics of the HTTP API, in a registry of their own (one per app, so tests and several
apps in one process do not collide).

- ``recfeast_request_seconds{endpoint, code}``: request latency histogram (seconds).
- ``recfeast_stage_seconds{stage}``: time in ``features``, ``retrieve``, ``rank``, ``embed_query``.
- ``recfeast_query_cache_total{result}``: query-embedding cache ``hit``/``miss``.
- ``recfeast_store_errors_total{store}``: online store reads that failed.
- ``recfeast_rejected_requests_total{endpoint, code}``: 4xx answers (401/403/413/429 included).
- ``recfeast_internal_errors_total``: 500 answers (unexpected exceptions; each is logged).
- ``recfeast_item_cache_lookups_total{result}``: item rows served from the in-process item cache
  (``hit``) or read from the store (``miss``); ``recfeast_item_cache_items``: items held;
  ``recfeast_item_cache_resets_total``: times it started over (a new load sentinel, its age
  limit, or full). Read from the cache at each scrape (:meth:`Metrics.watch_item_cache`).

Freshness in event time (:meth:`Metrics.watch_freshness`, read from the online store's freshness
record at each scrape, so they cover loads and pushes made by other processes and machines):

- ``recfeast_feature_lag_seconds{view}``: now minus the newest event time loaded online;
- ``recfeast_feature_load_age_seconds{view}``: now minus the last write of the view online;
- ``recfeast_feature_rows{view}``: rows of the last load (pushed views: rows pushed in all);
- ``recfeast_feature_stale{view}``: 1 when the lag is past the view's ``max_lag``, else 0;
- ``recfeast_event_to_online_seconds{view}``: histogram of event arrival -> visible online.
"""

from __future__ import annotations

STAGES = ("features", "retrieve", "rank", "embed_query")
BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """The API's collectors; :meth:`render` gives the text exposition format for ``/metrics``."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram, values

        # Importing Feast (``feast.metrics``, pulled in by ``feast.FeatureStore``) sets
        # PROMETHEUS_MULTIPROC_DIR for its Gunicorn feature server, which switches every
        # prometheus_client metric created later to file-backed values shared by name: a new
        # Metrics would then start from an older one's counts and write under /tmp. The API runs
        # in one process and exports this registry only, so its values stay in process memory.
        values.ValueClass = values.MutexValue
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
        self.internal_errors = Counter("recfeast_internal_errors", "Requests answered 500 (unexpected errors)",
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

    def watch_freshness(self, report_fn) -> None:
        """Expose the freshness gauges and histogram; ``report_fn()`` returns
        :func:`recfeast.freshness.report`'s list (called at each scrape; a failure exposes nothing)."""
        self.registry.register(_FreshnessCollector(report_fn))

    def watch_item_cache(self, cache) -> None:
        """Expose the item cache's counters (:class:`recfeast.serving.itemcache.ItemRowCache`),
        read at each scrape: nothing is added to the request path."""
        self.registry.register(_ItemCacheCollector(cache))

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def cache_lookup(self, hit: bool) -> None:
        self.cache.labels("hit" if hit else "miss").inc()

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` of the exposition."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _ItemCacheCollector:
    """Prometheus collector over an item cache's counters (see the module docstring)."""

    def __init__(self, cache):
        self.cache = cache

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = self.cache
        lookups = CounterMetricFamily("recfeast_item_cache_lookups", "Item rows from the in-process cache (hit) "
                                      "or the store (miss)", labels=["result"])
        lookups.add_metric(["hit"], c.hits)
        lookups.add_metric(["miss"], c.misses)
        yield lookups
        yield GaugeMetricFamily("recfeast_item_cache_items", "Items held by the item cache", value=len(c))
        yield CounterMetricFamily("recfeast_item_cache_resets", "Times the item cache started over", value=c.resets)


class _FreshnessCollector:
    """Prometheus collector over the freshness record (see the module docstring)."""

    def __init__(self, report_fn):
        self.report_fn = report_fn

    def describe(self):
        return []   # collected at scrape time only

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

        try:
            views = self.report_fn()
        except Exception:   # the store is down: /health says so; the scrape still answers
            return
        lag = GaugeMetricFamily("recfeast_feature_lag_seconds", "Now minus the newest event time online", labels=["view"])
        age = GaugeMetricFamily("recfeast_feature_load_age_seconds", "Now minus the last online write", labels=["view"])
        rows = GaugeMetricFamily("recfeast_feature_rows", "Rows of the last online load", labels=["view"])
        stale = GaugeMetricFamily("recfeast_feature_stale", "1 when lag > max_lag", labels=["view"])
        vis = HistogramMetricFamily("recfeast_event_to_online_seconds", "Event arrival to visible online",
                                    labels=["view"])
        for v in views:
            if v["lag_s"] is not None:
                lag.add_metric([v["view"]], v["lag_s"])
            if v["load_age_s"] is not None:
                age.add_metric([v["view"]], v["load_age_s"])
            if v["rows"] is not None:
                rows.add_metric([v["view"]], v["rows"])
            stale.add_metric([v["view"]], 1.0 if v["state"] == "stale" else 0.0)
            if v["visibility"]:
                h = v["visibility"]
                buckets = [(str(b), n) for b, n in h["buckets"]] + [("+Inf", h["count"])]
                vis.add_metric([v["view"]], buckets, h["sum_s"])
        yield from (lag, age, rows, stale, vis)
