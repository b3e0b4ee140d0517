"""The monitoring service: predictions and feedback -> live quality, drift, metrics, retrain and rollback."""
