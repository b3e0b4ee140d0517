"""The training service: dataset versions and retrain requests -> trained, evaluated, exported, registered, promoted models."""
