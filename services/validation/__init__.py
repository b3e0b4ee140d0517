"""The validation service: raw batches -> validated dataset versions or quarantine, with reports."""
