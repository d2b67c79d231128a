"""Pure parts of the read API: settings, header parsing, error bodies, the dependency gate,
metrics rendering, the rate limiter's local logic and the CLI's help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from cache.records import TokenLease
from readapi.dependency import DependencyGate
from readapi.errors import error_body, key_for_status
from readapi.freshness import parse_min_watermark, parse_wait_ms
from readapi.metrics import ApiMetrics
from readapi.ratelimit import RateLimiter
from readapi.settings import ApiSettings, SettingsError
from readapi.worker_metrics import WorkerMetrics


def test_settings_from_env_and_bounds() -> None:
    settings = ApiSettings.from_env({
        "LOYALTY_API_PORT": "9000", "LOYALTY_RATE_LIMIT_DEFAULT": "30",
        "LOYALTY_L1_MAX_ENTRIES": "10", "LOYALTY_L1_MAX_AGE_MS": "250",
        "LOYALTY_CURSOR_SECRET": "s", "LOYALTY_ES_INDEX_PREFIX": "x_",
        "LOYALTY_REDIS_KEY_PREFIX": "y:",
    })
    assert (settings.port, settings.rate_limit_default, settings.l1_max_entries) == (9000, 30, 10)
    assert settings.l1_max_age_ms == 250 and settings.cursor_secret == "s"
    assert settings.es_index_prefix == "x_" and settings.redis_key_prefix == "y:"
    assert not any("pg" in name for name in vars(settings))
    for name, value in (("LOYALTY_API_PORT", "70000"), ("LOYALTY_L1_MAX_AGE_MS", "0"),
                        ("LOYALTY_RATE_LIMIT_DEFAULT", "many")):
        with pytest.raises(SettingsError):
            ApiSettings.from_env({name: value})


def test_min_watermark_and_wait_parsing() -> None:
    assert parse_min_watermark({}) is None
    assert parse_min_watermark({"X-Min-Watermark": "1/2"}) == (1 << 32) + 2
    assert parse_wait_ms({}) == 1000
    assert parse_wait_ms({"X-Wait-Timeout-Ms": "5000"}) == 5000
    for bad in ("1", "x/y", "1/2/3", "", "/", "123456789/0"):
        with pytest.raises(Exception) as info:
            parse_min_watermark({"X-Min-Watermark": bad})
        assert getattr(info.value, "status", None) == 400
    for bad in ("5001", "-1", "", "1e3", "٣"):
        with pytest.raises(Exception) as info:
            parse_wait_ms({"X-Wait-Timeout-Ms": bad})
        assert getattr(info.value, "status", None) == 400


def test_error_body_and_keys() -> None:
    body = orjson.loads(error_body(404, "not_found", "m", "d", "r"))
    assert body == {"code": 404, "key": "not_found", "message": "m", "details": "d",
                    "request_id": "r"}
    assert key_for_status(405) == "method_not_allowed"
    assert key_for_status(413) == "invalid_request" and key_for_status(502) == "internal_error"


def test_dependency_gate_skips_then_probes() -> None:
    now = [0.0]
    gate = DependencyGate("x", 1.0, clock=lambda: now[0])
    assert gate.should_try()
    gate.failed(OSError("down"))
    assert not gate.up and not gate.should_try()
    now[0] = 1.5
    assert gate.should_try()  # one probe
    assert not gate.should_try()  # the others keep skipping
    gate.succeeded()
    assert gate.up and gate.should_try()


def test_metrics_render_per_route_figures() -> None:
    metrics = ApiMetrics()
    metrics.requests.observe("/v1/vouchers/{code}", "GET", 200, 0.0003)
    metrics.requests.observe("/v1/vouchers/{code}", "GET", 404, 7.0)
    metrics.requests.layers[0] += 2
    text = metrics.render().decode()
    assert ('readapi_requests_total{method="GET",route="/v1/vouchers/{code}",status="200"} 1.0'
            in text)
    assert 'readapi_request_duration_seconds_bucket{le="0.0005",route="/v1/vouchers/{code}"} 1.0' \
        in text
    assert 'readapi_request_duration_seconds_bucket{le="+Inf",route="/v1/vouchers/{code}"} 2.0' \
        in text
    assert 'readapi_lookup_source_total{layer="l1"} 2.0' in text


class LeaseStore:
    """Stands in for CacheStore.lease_tokens only: the limiter's local arithmetic."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.calls = 0

    async def lease_tokens(self, app_id: str, limit: int, wanted: int, *,
                           window_seconds: int = 60) -> TokenLease:
        self.calls += 1
        granted = min(wanted, -(-self.left // 8))
        self.left -= granted
        return TokenLease(granted, self.left, 42)


async def test_rate_limiter_leases_in_batches_and_refuses_when_spent() -> None:
    store = LeaseStore(100)
    limiter = RateLimiter(store, DependencyGate("redis", 1.0), ApiMetrics())  # type: ignore[arg-type]
    decisions = [await limiter.acquire("app", 100) for _ in range(101)]
    assert all(d.allowed for d in decisions[:100])
    assert [d.remaining for d in decisions[:100]] == list(range(99, -1, -1))
    refused = decisions[100]
    assert not refused.allowed and refused.retry_after == 42
    assert store.calls < 60  # batches, not a call per request
    await limiter.close()


def test_cli_help_documents_the_environment() -> None:
    out = subprocess.run([sys.executable, "-m", "readapi.cli", "serve", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for text in ("--host", "--port", "--workers", "LOYALTY_REDIS_URL", "LOYALTY_CURSOR_SECRET",
                 "LOYALTY_L1_MAX_AGE_MS", "LOYALTY_RATE_LIMIT_DEFAULT"):
        assert text in out


def test_worker_metrics_add_up_counters_and_label_gauges(tmp_path: Path) -> None:
    """Two workers' figures, one from a snapshot file and one live, in one scrape."""
    other = ApiMetrics()
    other.requests.observe("/v1/vouchers/{code}", "GET", 200, 0.0003)
    other.requests.observe("/v1/vouchers/{code}", "GET", 200, 0.0003)
    other.fills.labels("written").inc(3)
    other.l1_entries.set(7)
    WorkerMetrics(tmp_path, other.registry).write()  # written as this process's pid
    own_file = next(tmp_path.glob("*.json"))
    own_file.rename(tmp_path / "other.json")
    mine = ApiMetrics()
    mine.requests.observe("/v1/vouchers/{code}", "GET", 200, 0.0003)
    mine.requests.observe("/v1/vouchers/{code}", "GET", 404, 7.0)
    mine.fills.labels("written").inc(1)
    mine.l1_entries.set(2)
    text = WorkerMetrics(tmp_path, mine.registry).render().decode()
    assert ('readapi_requests_total{method="GET",route="/v1/vouchers/{code}",status="200"} 3.0'
            in text)
    assert ('readapi_requests_total{method="GET",route="/v1/vouchers/{code}",status="404"} 1.0'
            in text)
    assert 'readapi_request_duration_seconds_bucket{le="+Inf",route="/v1/vouchers/{code}"} 4.0' \
        in text
    assert 'readapi_fills_total{result="written"} 4.0' in text
    assert f'readapi_l1_entries{{worker="{os.getpid()}"}} 2.0' in text
    assert 'readapi_l1_entries{worker="other"} 7.0' in text
    # A file being replaced or broken costs its figures, not the scrape.
    (tmp_path / "broken.json").write_bytes(b"{not json")
    assert b"readapi_fills_total" in WorkerMetrics(tmp_path, mine.registry).render()
