"""Read API: HTTP over the layered cache and Elasticsearch; never talks to Postgres."""
