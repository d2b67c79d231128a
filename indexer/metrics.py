"""Prometheus metrics of the indexer, served on their own HTTP port by ``indexer run``
(``indexer.health``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHANGES = Counter("indexer_changes_total", "Row changes decoded from the slot", ["table"])
TRANSACTIONS = Counter("indexer_transactions_total", "Transactions applied to every sink")
BATCH_CHANGES = Histogram(
    "indexer_batch_changes",
    "Row changes per applied batch",
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 20000),
)
APPLY_SECONDS = Histogram(
    "indexer_apply_seconds",
    "Time from peek to slot advance for one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DOCUMENTS_WRITTEN = Counter(
    "indexer_documents_written_total",
    "Documents and removals the capture loop applied to both sinks",
    ["kind"],
)
RETRIES = Counter("indexer_retries_total", "Batch attempts that failed and were retried", ["cause"])
LAG_BYTES = Gauge(
    "indexer_lag_bytes",
    "WAL bytes the slot has not confirmed: the server's WAL position minus the slot's "
    "confirmed position (read every few seconds, and after each step)",
)
LAG_SECONDS = Gauge(
    "indexer_lag_seconds",
    "Upper bound of the age of the oldest commit not applied yet: seconds since every earlier "
    "commit was known applied; 0 when the slot confirmed everything, growing while stuck",
)
RETAINED_WAL_BYTES = Gauge(
    "indexer_retained_wal_bytes",
    "WAL the server keeps for the slot: its WAL position minus the slot's restart position",
)
WAL_STATUS = Gauge(
    "indexer_wal_status",
    "The slot's wal_status: 1 for the current one (reserved, extended, unreserved, lost), "
    "0 for the others",
    ["status"],
)
LAST_STEP_TIMESTAMP = Gauge(
    "indexer_last_step_timestamp_seconds", "Unix time of the last step that succeeded"
)
LOADING = Gauge("indexer_loading", "1 while a load (first, or a reload into a new generation) runs")
LOAD_ROWS = Gauge(
    "indexer_load_rows", "Rows read by the load in progress (or the last one)", ["table"]
)
LOAD_ROWS_EXPECTED = Gauge(
    "indexer_load_rows_expected", "Rows the load in progress (or the last one) reads", ["table"]
)
SLOT_LOSSES = Counter(
    "indexer_slot_losses_total",
    "Replication slots found dropped or invalidated (wal_status lost) under complete indices; "
    "each one starts a reload into a new generation",
    ["reason"],
)
WATERMARK = Gauge("indexer_applied_watermark", "Applied watermark (LSN as an integer)")
CATCHING_UP = Gauge(
    "indexer_catching_up",
    "1 while the indexer is behind by more than a batch and the serving indices refresh "
    "every LOYALTY_ES_CATCHUP_REFRESH instead of LOYALTY_ES_REFRESH",
)
INVALID_FILTERS = Counter(
    "indexer_invalid_segment_filters_total", "Segment filters that could not be compiled"
)
REJECTED_DOCUMENTS = Counter(
    "indexer_rejected_documents_total", "Documents Elasticsearch refused for good"
)
QUARANTINED_ROWS = Counter(
    "indexer_quarantined_rows_total",
    "Source rows put in the quarantine (loyalty_indexer.quarantine): once per change that "
    "could not become a document, not per attempt of its batch",
    ["table"],
)
QUARANTINE_ROWS = Gauge(
    "indexer_quarantine_rows", "Rows in the quarantine, as this process last counted them"
)
SEGMENT_JOBS_PENDING = Gauge(
    "indexer_segment_jobs_pending", "Segment recompute jobs waiting or in progress"
)
SEGMENT_RECOMPUTE_CUSTOMERS = Counter(
    "indexer_segment_recompute_customers_total",
    "Customers a segment recompute looked at (candidates found by its searches)",
)
SEGMENT_TRANSITIONS = Counter(
    "indexer_segment_transitions_total",
    "Customers entering or leaving a segment (each one event unless written silently)",
)
SEGMENT_TICK_CUSTOMERS = Counter(
    "indexer_segment_tick_customers_total",
    "Customers the relative-date clock tick looked at (their date crossed a bound)",
)
REBUILD_READS = Counter(
    "indexer_rebuild_reads_total",
    "Batches whose documents were rebuilt, by the server read: the standby "
    "(LOYALTY_PG_STANDBY_DSN) or the primary",
    ["server"],
)
STANDBY_FALLBACKS = Counter(
    "indexer_standby_fallbacks_total",
    "Batches rebuilt from the primary although a standby is set: lagging (behind by more "
    "than LOYALTY_PG_STANDBY_MAX_LAG_BYTES, or not there within LOYALTY_PG_STANDBY_MAX_WAIT_MS), "
    "unavailable (cannot be reached), not_standby (not in recovery: promoted, or a primary)",
    ["reason"],
)
STANDBY_WAIT_SECONDS = Histogram(
    "indexer_standby_wait_seconds",
    "Time a batch waited for the standby to replay its last commit",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
STANDBY_REPLAY_LAG_BYTES = Gauge(
    "indexer_standby_replay_lag_bytes",
    "WAL between the end of the last batch's newest commit and the standby's replay position "
    "when last checked",
)
SHARD_FOREIGN_WRITES = Counter(
    "indexer_shard_foreign_writes_total",
    "Writes a shard built for another shard's projects and left out (rows without a project "
    "reach every shard: segment_members)",
)
SHARD_HANDOFFS = Counter(
    "indexer_shard_handoffs_total", "Shards of a previous plan that reached their handoff"
)
