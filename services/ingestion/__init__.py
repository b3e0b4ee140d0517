"""The ingestion service: data events -> deduplicated, batched, immutable raw batches."""
