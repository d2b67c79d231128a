"""The read model: everything the indexer writes and the read API reads, agreed in one place.

See ``docs/internals.md`` ("The read model"). Modules:

- ``documents``: document kinds, the document schema number, alias kinds with their fields;
- ``indices``: Elasticsearch alias and generation names, field names, mappings and settings;
- ``keys``: the Redis key layout;
- ``codec``: the envelope, invalidation, API key and watermark codecs.

Pure values and functions only: no I/O, no configuration read here.
"""
