"""Flywheel's shared library: settings, contracts, events, Kafka, stores, metrics, logs."""
