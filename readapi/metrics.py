"""Prometheus metrics of one read API process, in a registry of its own (one per app, so
tests may build several apps in one process).

Per-request figures (request counts, latency histograms, answers per cache layer) are kept
in plain ints and lists and turned into metric families only when /metrics is scraped:
prometheus_client's own counters take a lock per increment, too dear for the hot path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

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


class RouteStats:
    """Counts per status and the latency histogram of one (route, method): what a handler
    holds from registration on, so that observing costs no key building."""

    __slots__ = ("by_status", "histogram")

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        # count per bucket (the last one is +Inf)..., sum of seconds
        self.histogram: list[float] = [0.0] * (len(_LATENCY_BUCKETS) + 2)

    def observe(self, status: int, seconds: float) -> None:
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        histogram = self.histogram
        histogram[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        histogram[-1] += seconds


class RequestStats:
    """Request counts per (route, method, status) and latency histograms per route."""

    __slots__ = ("_routes", "layers")

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], RouteStats] = {}
        # Objects answered per cache layer: [l1, l2, es].
        self.layers: list[int] = [0, 0, 0]

    def route(self, route: str, method: str) -> RouteStats:
        stats = self._routes.get((route, method))
        if stats is None:
            stats = self._routes[(route, method)] = RouteStats()
        return stats

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.route(route, method).observe(status, seconds)

    @property
    def counts(self) -> dict[tuple[str, str, int], int]:
        return {
            (route, method, status): count
            for (route, method), stats in list(self._routes.items())
            for status, count in list(stats.by_status.items())
        }

    def _histograms(self) -> dict[str, list[float]]:
        """Latency histograms per route, summed over methods."""
        merged: dict[str, list[float]] = {}
        for (route, _method), stats in list(self._routes.items()):
            total = merged.setdefault(route, [0.0] * len(stats.histogram))
            for i, value in enumerate(stats.histogram):
                total[i] += value
        return merged

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "readapi_requests",
            "HTTP requests answered, per route template, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in self.counts.items():
            requests.add_metric([route, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "readapi_request_duration_seconds", "Time to answer, per route template",
            labels=["route"],
        )
        for route, histogram in self._histograms().items():
            cumulative: float = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, hits in zip((*_LATENCY_BUCKETS, float("inf")), histogram, strict=False):
                cumulative += hits
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([route], buckets, sum_value=histogram[-1])
        yield latency
        layers = CounterMetricFamily(
            "readapi_lookup_source", "Objects answered per cache layer (l1, l2, es)",
            labels=["layer"],
        )
        for name, count in zip(("l1", "l2", "es"), self.layers, strict=True):
            layers.add_metric([name], count)
        yield layers

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
        self.requests = RequestStats()
        r.register(self.requests)
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
        self.l1_bytes = Gauge(
            "readapi_l1_bytes",
            "Bytes the in-process object cache accounts for (its bound: LOYALTY_L1_MAX_BYTES)",
            registry=r,
        )
        self.invalidation_connected = Gauge(
            "readapi_invalidation_connected",
            "1 while subscribed to the invalidation channel (L1 on), else 0", registry=r,
        )

    def render(self) -> bytes:
        result: bytes = generate_latest(self.registry)
        return result
