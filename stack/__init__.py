"""Local stack manager: PostgreSQL 15, Redis 7 and Elasticsearch 8.19 on loopback, no Docker."""
