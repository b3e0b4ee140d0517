"""The monitoring service: predictions + feedback -> live quality, drift, retrain, rollback."""
