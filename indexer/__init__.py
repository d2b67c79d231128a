"""CDC indexer: Postgres logical decoding into Elasticsearch and the Redis cache."""
