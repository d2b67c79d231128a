"""Shards and replicas per kind, node URL lists, and partial search answers refused."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cache.config import SettingsError, es_hosts
from cache.errors import SearchUnavailable
from indexer.settings import IndexerSettings, counts_per_kind
from readapi.elastic import _refuse_partial


@pytest.mark.parametrize(
    ("raw", "default", "expected"),
    [
        ("1", 1, {"voucher": 1, "customer": 1, "campaign": 1, "segment": 1}),
        ("2,voucher=4", 1, {"voucher": 4, "customer": 2, "campaign": 2, "segment": 2}),
        ("customer=3", 0, {"voucher": 0, "customer": 3, "campaign": 0, "segment": 0}),
        ("segment=2,3", 1, {"voucher": 3, "customer": 3, "campaign": 3, "segment": 2}),
    ],
)
def test_counts_per_kind(raw: str, default: int, expected: dict[str, int]) -> None:
    assert counts_per_kind(raw, default) == expected


@pytest.mark.parametrize(
    "raw", ["", "x", "1,2", "voucher=1,voucher=2", "vouchers=1", "=1", "voucher=", "-1", "1.5"]
)
def test_counts_per_kind_refuses(raw: str) -> None:
    with pytest.raises(ValueError):
        counts_per_kind(raw, 1)


def test_shard_and_replica_settings_are_read_and_bounded() -> None:
    settings = IndexerSettings.from_env(
        {"LOYALTY_ES_SHARDS": "2,voucher=3", "LOYALTY_ES_REPLICAS": "1"}
    )
    assert counts_per_kind(settings.es_shards, 1)["voucher"] == 3
    assert counts_per_kind(settings.es_replicas, 0)["segment"] == 1
    with pytest.raises(SettingsError, match="LOYALTY_ES_SHARDS"):
        IndexerSettings.from_env({"LOYALTY_ES_SHARDS": "voucher=0"})
    with pytest.raises(SettingsError, match="LOYALTY_ES_REPLICAS"):
        IndexerSettings.from_env({"LOYALTY_ES_REPLICAS": "customer=17"})


def test_several_node_urls() -> None:
    urls = "http://127.0.0.1:9201,http://127.0.0.1:9202"
    assert es_hosts(IndexerSettings.from_env({"LOYALTY_ES_URL": urls}).es_url) == [
        "http://127.0.0.1:9201",
        "http://127.0.0.1:9202",
    ]
    for bad in ("http://127.0.0.1:9201,", "http://a:9200,ftp://b", "http://a:9200, http://b"):
        with pytest.raises(SettingsError, match="LOYALTY_ES_URL"):
            IndexerSettings.from_env({"LOYALTY_ES_URL": bad})


def _answer(body: Any) -> Any:
    return SimpleNamespace(body=body)


def test_a_search_some_shard_failed_is_refused() -> None:
    _refuse_partial("search", _answer({"_shards": {"total": 3, "failed": 0}, "hits": {}}))
    _refuse_partial("get", _answer({"found": True}))
    with pytest.raises(SearchUnavailable, match="1 of 3 shards"):
        _refuse_partial("search", _answer({"_shards": {"total": 3, "failed": 1}, "hits": {}}))
