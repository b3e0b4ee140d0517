"""Settings of the training service (env prefix ``FLYWHEEL_TRAINING_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    """Settings of the training service."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_TRAINING_")

    metrics_port: int = 9103
    """Port of the Prometheus metrics endpoint."""
    group_id: str = "flywheel-training"
    """Consumer group of the training service."""
    search_budget_s: float | None = Field(None, gt=0)
    """Caps every contract's ``training.search_time_budget_s`` (tests and laptops)."""
    max_train_rows: int | None = Field(None, ge=100)
    """Train on at most this many of the latest training rows (none: all of them).
    Recorded in the manifest, so a reproduction uses the same rows."""
    cv_folds: int = Field(3, ge=2, le=10)
    """Cross-validation folds of the model search."""
    importance_rows: int = Field(5000, ge=100)
    """Holdout rows used for permutation importance (the latest ones)."""
    importance_repeats: int = Field(3, ge=1)
    """Permutation repeats per feature."""
    min_group_rows: int = Field(50, ge=1)
    """Groups with fewer holdout rows are reported but left out of the fairness gaps
    and group-regression gate (their rates are noise)."""
    corrupt_label_share: float = Field(0.0, ge=0.0, le=1.0)
    """Test hook: flip this share of the training labels (seeded) to produce a
    deliberately worse model. Recorded in the manifest; keep 0 in production."""
    threads: int | None = Field(1, ge=1)
    """OpenMP/BLAS threads a run may use. 1 suits a machine shared with the other
    services (OpenMP threads spin-wait on busy cores); raise it on a dedicated host."""
    finish_ahead: bool = True
    """Finish the search's leader (refit, export, parity, evaluation) on a second thread
    while the search goes on; off on a one-core host, where it would slow the search."""
    background_nice: int = Field(10, ge=0, le=19)
    """How much lower the CPU priority of the search's worker process and of the thread
    finishing its leader is: background work that yields to serving and to the fast first
    candidate (0: the service's own priority)."""
    search_process: bool = True
    """Cross-validate the search's candidates in a worker process (started with the
    service), so the search does not share the GIL with the fast first candidate and the
    finishing of its leader."""
    poll_timeout_ms: int = Field(500, ge=10)
    """How long one consumer poll waits for records."""
    topic_check_s: float = Field(30.0, gt=0)
    """How often the consumer recreates missing topics (an embedded broker that
    restarted has lost them)."""
    schedule_check_s: float = Field(30.0, gt=0)
    """How often contracts with a ``training.schedule_seconds`` are checked."""
    retry_base_s: float = Field(30.0, gt=0)
    """Back-off before the first retry of a failed run; each further retry doubles it."""
    retry_max_s: float = Field(900.0, gt=0)
    """Longest back-off between retries of a failed run."""
    retry_attempts: int = Field(5, ge=0)
    """Automatic retries of a failed run; after them the next trigger tries again."""
