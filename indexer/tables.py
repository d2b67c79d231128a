"""The contract's source tables (docs/api.md §1), in foreign-key order: a table only references
tables before it. The publication covers them all; the seed loads them in this order."""

from __future__ import annotations

CONTRACT_TABLES: tuple[str, ...] = (
    "projects",
    "api_keys",
    "customers",
    "campaigns",
    "vouchers",
    "redemptions",
    "segments",
    "segment_members",
)
