"""The monitoring service's Prometheus metrics, on the service's own registry.

Label sets are bounded: models and features come from the contracts, versions are
capped per model (old versions' series are removed), groups are contract values.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

M = TypeVar("M", Gauge, Counter)


class MonitoringMetrics:
    """Every metric the monitoring service exports.

    Args:
        registry: the service's explicit registry.
    """

    def __init__(self, registry: CollectorRegistry):
        self.live_metric = Gauge(
            "flywheel_monitoring_live_metric",
            "Live quality of a model version over its sliding window of labelled rows "
            "(accuracy, f1, roc_auc; multiclass: accuracy, macro f1; regression: mae, rmse, r2).",
            ["model", "version", "metric"],
            registry=registry,
        )
        self.group_metric = Gauge(
            "flywheel_monitoring_group_metric",
            "Live FPR, FNR and selection rate per group (group = <attr>=<value>; multiclass: "
            "metric = <rate>:<class>, one-vs-rest), or a regressor's MAE and relative_mae.",
            ["model", "version", "group", "metric"],
            registry=registry,
        )
        self.fairness_gap = Gauge(
            "flywheel_monitoring_fairness_gap",
            "Largest difference of a rate (regression: of relative_mae) between the groups "
            "of an attribute.",
            ["model", "version", "attribute", "metric"],
            registry=registry,
        )
        self.drift_score = Gauge(
            "flywheel_monitoring_drift_score",
            "Drift of served features against the version's training reference (last window).",
            ["model", "version", "feature", "stat"],
            registry=registry,
        )
        self.prediction_drift = Gauge(
            "flywheel_monitoring_prediction_drift",
            "PSI of the served predictions (binary: positive-class probability; multiclass: "
            "predicted class; regression: predicted value) against the version's first window.",
            ["model", "version"],
            registry=registry,
        )
        self.labels = Counter(
            "flywheel_monitoring_labels_total",
            "Feedback join outcomes (joined|unmatched_evicted|late|duplicate).",
            ["model", "outcome"],
            registry=registry,
        )
        self.actions = Counter(
            "flywheel_monitoring_actions_total",
            "Actions taken (retrain|rollback|promote).",
            ["model", "action"],
            registry=registry,
        )
        self.dlq = Counter(
            "flywheel_monitoring_dlq_total",
            "Dead letters seen on data.events.dlq.",
            ["dataset"],
            registry=registry,
        )
        self.quarantined = Counter(
            "flywheel_monitoring_quarantined_total",
            "Batches quarantined by validation.",
            ["dataset"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "flywheel_monitoring_consumer_lag",
            "Messages a consumer group is behind, per topic.",
            ["group", "topic"],
            registry=registry,
        )
        self.agreement = Gauge(
            "flywheel_monitoring_agreement",
            "Share of rows where the challenger's label equals the champion's (shadow).",
            ["model", "champion", "challenger"],
            registry=registry,
        )
        self.metric_difference = Gauge(
            "flywheel_monitoring_metric_difference",
            "Challenger minus champion on the primary metric (same window of time).",
            ["model", "champion", "challenger"],
            registry=registry,
        )
        self.predictions = Counter(
            "flywheel_monitoring_predictions_total",
            "Prediction events consumed, per model and role.",
            ["model", "role"],
            registry=registry,
        )
        self.windows = Counter(
            "flywheel_monitoring_windows_total",
            "Drift windows completed.",
            ["model", "version"],
            registry=registry,
        )
        self.rejected = Counter(
            "flywheel_monitoring_rejected_total",
            "Consumed records that could not be used, by topic and reason.",
            ["topic", "reason"],
            registry=registry,
        )
        self.pending_labels = Gauge(
            "flywheel_monitoring_pending_predictions",
            "Predictions waiting for their feedback in the bounded join.",
            registry=registry,
        )
        self.early_feedback = Gauge(
            "flywheel_monitoring_early_feedback",
            "Feedback records held until their prediction is consumed.",
            registry=registry,
        )
        self.dataset_versions = Counter(
            "flywheel_monitoring_dataset_versions_total",
            "Dataset versions announced on data.validated.",
            ["dataset"],
            registry=registry,
        )
        self.log_rows = Counter(
            "flywheel_monitoring_log_rows_total",
            "Rows written to the prediction log (kind = prediction|feedback).",
            ["kind"],
            registry=registry,
        )
        self.registered = Gauge(
            "flywheel_monitoring_registered_version",
            "The newest version of each model seen on models.registered.",
            ["model"],
            registry=registry,
        )
        self._by_version: dict[tuple[str, str], set[tuple[int, tuple[str, ...]]]] = {}
        self._metrics_by_id: dict[int, Gauge | Counter] = {}

    def version_series(self, metric: M, model: str, version: str, *rest: str) -> M:
        """The child of ``metric`` for a version's labels, remembered for :meth:`forget_version`."""
        labels = (model, version, *rest)
        self._by_version.setdefault((model, version), set()).add((id(metric), labels))
        self._metrics_by_id[id(metric)] = metric
        return metric.labels(*labels)

    def forget_version(self, model: str, version: str) -> None:
        """Remove the series of a version no longer tracked (keeps the label set bounded)."""
        for metric_id, labels in self._by_version.pop((model, version), set()):
            self._metrics_by_id[metric_id].remove(*labels)
