"""Medical volumes on disk: decoding and validation (no DuckDB, no Prefect)."""
