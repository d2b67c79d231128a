"""Prometheus metrics of one read API process, in a registry of its own (one per app, so
tests may build several apps in one process).

Label children are created once and kept: the hot path only increments and observes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase

# Values kept by the objects that count them (single-flight, the Elasticsearch reader),
# read only when /metrics is scraped.
CountsByLabels = Callable[[], Mapping[tuple[str, ...], float]]


class _CountersFromFunctions:
    def __init__(self) -> None:
        self._items: list[tuple[str, str, Sequence[str], CountsByLabels]] = []

    def add(self, name: str, doc: str, labels: Sequence[str], counts: CountsByLabels) -> None:
        self._items.append((name, doc, labels, counts))

    def collect(self) -> Iterator[Metric]:
        for name, doc, labels, counts in self._items:
            family = CounterMetricFamily(name, doc, labels=list(labels))
            for values, count in counts().items():
                family.add_metric(list(values), count)
            yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latencies of a cache-served API sit well below a millisecond.
_LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "readapi_requests", "HTTP requests answered, per route template, method and status",
            ["route", "method", "status"], registry=r,
        )
        self._latency = Histogram(
            "readapi_request_duration_seconds", "Time to answer, per route template",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self._lookups = Counter(
            "readapi_lookup_source", "Objects answered per cache layer (l1, l2, es)",
            ["layer"], registry=r,
        )
        self.stale_serves = Counter(
            "readapi_stale_serves",
            "Answers served from a cache while the layer behind it was unreachable",
            ["what"], registry=r,
        )
        self.fills = Counter(
            "readapi_fills", "Redis fills from Elasticsearch reads (written or kept newer)",
            ["result"], registry=r,
        )
        self.from_functions = _CountersFromFunctions()
        r.register(self.from_functions)
        self.dependency_errors = Counter(
            "readapi_dependency_errors", "Failed calls to Redis or Elasticsearch",
            ["dependency"], registry=r,
        )
        self.rate_limited = Counter(
            "readapi_rate_limited", "Requests refused with 429", registry=r,
        )
        self.rate_limit_fallback = Counter(
            "readapi_rate_limit_fallback",
            "Requests limited by the local fallback bucket while Redis was unreachable",
            registry=r,
        )
        self.watermark = Gauge(
            "readapi_watermark_lsn", "Indexer watermark as this process knows it", registry=r,
        )
        self.l1_entries = Gauge(
            "readapi_l1_entries", "Entries held in the in-process object cache", registry=r,
        )
        self.invalidation_connected = Gauge(
            "readapi_invalidation_connected",
            "1 while subscribed to the invalidation channel (L1 on), else 0", registry=r,
        )
        self._children: dict[tuple[str, str, int], MetricWrapperBase] = {}
        self._latency_children: dict[str, Histogram] = {}
        self.layer_l1 = self._lookups.labels("l1")
        self.layer_l2 = self._lookups.labels("l2")
        self.layer_es = self._lookups.labels("es")

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self._requests.labels(route, method, str(status))
        counter.inc()  # type: ignore[attr-defined]
        histogram = self._latency_children.get(route)
        if histogram is None:
            histogram = self._latency_children[route] = self._latency.labels(route)
        histogram.observe(seconds)

    def render(self) -> bytes:
        result: bytes = generate_latest(self.registry)
        return result
