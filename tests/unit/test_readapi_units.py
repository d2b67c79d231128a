"""Pure parts of the read API: settings, header parsing, error bodies, the dependency gate,
metrics rendering, the rate limiter's local logic and the CLI's help."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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
        "LOYALTY_L1_MAX_BYTES": "2097152", "LOYALTY_L1_MAX_AGE_MS": "250",
        "LOYALTY_CURSOR_SECRET": "s", "LOYALTY_ES_INDEX_PREFIX": "x_",
        "LOYALTY_REDIS_KEY_PREFIX": "y:",
    })
    assert (settings.port, settings.rate_limit_default, settings.l1_max_bytes) == (
        9000, 30, 2097152)
    assert ApiSettings.from_env({}).l1_max_bytes == 64 * 1024 * 1024
    assert settings.l1_max_age_ms == 250 and settings.cursor_secret == "s"
    assert settings.es_index_prefix == "x_" and settings.redis_key_prefix == "y:"
    assert not any("pg" in name for name in vars(settings))
    for name, value in (("LOYALTY_API_PORT", "70000"), ("LOYALTY_L1_MAX_AGE_MS", "0"),
                        ("LOYALTY_RATE_LIMIT_DEFAULT", "many"),
                        ("LOYALTY_L1_MAX_BYTES", str((1 << 20) - 1)),
                        ("LOYALTY_L1_MAX_BYTES", str((64 << 30) + 1))):
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
    mine.l1_bytes.set(4096)
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
    assert f'readapi_l1_bytes{{worker="{os.getpid()}"}} 4096.0' in text
    # A file being replaced or broken costs its figures, not the scrape.
    (tmp_path / "broken.json").write_bytes(b"{not json")
    assert b"readapi_fills_total" in WorkerMetrics(tmp_path, mine.registry).render()


# -- bounded abuse: settings, failed authentications, index refreshes ---------------------------


def test_abuse_settings_defaults_and_bounds() -> None:
    settings = ApiSettings.from_env({})
    assert settings.miss_ttl_seconds == 60
    assert settings.auth_failures_per_minute == 30
    assert settings.keepalive_timeout_seconds == 75
    assert settings.header_timeout_seconds == 10
    settings = ApiSettings.from_env({
        "LOYALTY_MISS_TTL_SECONDS": "5", "LOYALTY_AUTH_FAILURES_PER_MINUTE": "3",
        "LOYALTY_KEEPALIVE_TIMEOUT_SECONDS": "2", "LOYALTY_HEADER_TIMEOUT_SECONDS": "1",
    })
    assert (settings.miss_ttl_seconds, settings.auth_failures_per_minute) == (5, 3)
    assert (settings.keepalive_timeout_seconds, settings.header_timeout_seconds) == (2, 1)
    for name in ("LOYALTY_MISS_TTL_SECONDS", "LOYALTY_AUTH_FAILURES_PER_MINUTE",
                 "LOYALTY_KEEPALIVE_TIMEOUT_SECONDS", "LOYALTY_HEADER_TIMEOUT_SECONDS"):
        for bad in ("0", "-1", "1.5", "many"):
            with pytest.raises(SettingsError, match=name):
                ApiSettings.from_env({name: bad})


def test_cursor_secret_list_is_validated_and_never_echoed() -> None:
    settings = ApiSettings.from_env({"LOYALTY_CURSOR_SECRET": "new-one,old-one"})
    assert settings.cursor_secret == "new-one,old-one"
    for bad in (",", "s3cr3t,", ",s3cr3t", "s3cr3t,,older"):
        with pytest.raises(SettingsError, match="LOYALTY_CURSOR_SECRET") as info:
            ApiSettings.from_env({"LOYALTY_CURSOR_SECRET": bad})
        assert "s3cr3t" not in str(info.value)


def test_the_default_cursor_secret_is_warned_about_off_the_local_stack() -> None:
    assert ApiSettings().warnings() == []  # the local stack: loopback URLs
    local = ApiSettings(redis_url="redis://localhost:6380/0", es_url="http://[::1]:9200")
    assert local.warnings() == []
    deployed = ApiSettings(redis_url="redis://cache.internal:6379/0")
    (warning,) = deployed.warnings()
    assert "LOYALTY_CURSOR_SECRET" in warning
    assert ApiSettings(es_url="https://10.0.0.7:9200").warnings() != []
    # A secret of the deployment's own: nothing to warn about.
    assert ApiSettings(redis_url="redis://cache.internal:6379/0",
                       cursor_secret="deployment-secret").warnings() == []


def test_failed_authentications_are_limited_per_address_in_a_bounded_table() -> None:
    from readapi.auth import FailedAuthLimiter

    now = [1000.0]
    limiter = FailedAuthLimiter(3, capacity=2, clock=lambda: now[0])
    # The first ``limit`` failures of a window are let through, then a wait is asked for.
    assert [limiter.failed("10.0.0.1") for _ in range(5)] == [0, 0, 0, 60, 60]
    now[0] += 20.5
    assert limiter.failed("10.0.0.1") == 40  # what is left of the window, rounded up
    assert limiter.failed("10.0.0.2") == 0  # another address has its own count
    now[0] += 40
    assert limiter.failed("10.0.0.1") == 0  # a new window
    for n in range(100):
        limiter.failed(f"10.1.0.{n}")
    assert len(limiter) == 2  # bounded whatever the number of addresses
    assert (limiter.failures, limiter.throttled) == (108, 3)


# What the client answers a refresh every shard took: the body under ``.body``.
_REFRESHED = SimpleNamespace(body={"_shards": {"total": 1, "successful": 1, "failed": 0}})


class _FakeIndices:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.started = 0

    async def refresh(self, index: str) -> SimpleNamespace:
        self.started += 1
        await self.release.wait()
        return _REFRESHED


class _FakeElastic:
    def __init__(self) -> None:
        self.indices = _FakeIndices()


async def test_a_watermark_already_refreshed_never_refreshes_again() -> None:
    from cache.watermark import WatermarkHolder
    from readapi.elastic import SearchReader

    holder = WatermarkHolder(100)
    client = _FakeElastic()
    reader = SearchReader(
        client, "t_", DependencyGate("elasticsearch", 1.0), watermark=holder  # type: ignore[arg-type]
    )
    await reader.refresh("voucher", 50)
    assert reader.requests["refresh"] == 1
    # The refresh began at watermark 100: every write up to 100 is searchable.
    for wanted in (1, 50, 99, 100):
        await reader.refresh("voucher", wanted)
    assert reader.requests["refresh"] == 1
    # Per kind: the customers' index was never refreshed.
    await reader.refresh("customer", 1)
    assert reader.requests["refresh"] == 2
    # A watermark beyond the last refresh's start needs a new one.
    holder.advance(200)
    await reader.refresh("voucher", 150)
    assert reader.requests["refresh"] == 3
    await reader.refresh("voucher", 200)
    assert reader.requests["refresh"] == 3

    # Concurrent requests share the refresh in flight...
    client.indices.release.clear()
    holder.advance(300)
    waiting = [asyncio.create_task(reader.refresh("voucher", w)) for w in (250, 280, 300)]
    await asyncio.sleep(0.01)
    assert reader.requests["refresh"] == 4
    # ...but one asking past the watermark the refresh in flight began at starts its own.
    holder.advance(400)
    later = asyncio.create_task(reader.refresh("voucher", 350))
    await asyncio.sleep(0.01)
    assert reader.requests["refresh"] == 5
    client.indices.release.set()
    await asyncio.gather(*waiting, later)
    await reader.refresh("voucher", 400)
    assert reader.requests["refresh"] == 5


async def test_a_failed_refresh_proves_nothing() -> None:
    from cache.errors import SearchUnavailable
    from cache.watermark import WatermarkHolder
    from readapi.elastic import SearchReader

    class Failing(_FakeIndices):
        async def refresh(self, index: str) -> SimpleNamespace:
            self.started += 1
            if self.started == 1:
                raise SearchUnavailable("down")
            return _REFRESHED

    client = _FakeElastic()
    client.indices = Failing()
    reader = SearchReader(
        client, "t_", DependencyGate("elasticsearch", 0.0),  # type: ignore[arg-type]
        watermark=WatermarkHolder(10),
    )
    with pytest.raises(SearchUnavailable):
        await reader.refresh("voucher", 5)
    await reader.refresh("voucher", 5)
    assert client.indices.started == 2
