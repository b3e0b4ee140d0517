"""Flywheel's shared library: settings, contracts, events, Kafka wiring, stores, metrics, logging."""
