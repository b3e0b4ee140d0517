"""The training service: dataset versions -> trained, evaluated, registered, promoted models."""
