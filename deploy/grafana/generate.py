"""Generate the Grafana dashboards (deploy/grafana/dashboards/*.json) from one spec.

    python deploy/grafana/generate.py           # rewrite the JSON files
    python deploy/grafana/generate.py --check   # exit 1 if they are stale

Every panel is a PromQL expression over the metric names all five services share
(see README, "Metrics"); ``$model`` is the dashboard's model variable. The JSON is
committed so Grafana's file provisioning can load it without running this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "flywheel-prometheus"}
M = 'model=~"$model"'

Panel = tuple[str, str, list[tuple[str, str]], str]
"""(title, kind, [(expr, legend)], unit); kind is timeseries, stat or table."""

OVERVIEW: list[Panel] = [
    ("Services up", "stat", [('up{job="flywheel"}', "{{service}}")], "none"),
    (
        "Requests per second by model and version",
        "timeseries",
        [
            (
                f"sum by (model, version) (rate(flywheel_serving_requests_total{{{M}}}[5m]))",
                "{{model}} v{{version}}",
            )
        ],
        "reqps",
    ),
    (
        "Latency p50 / p99",
        "timeseries",
        [
            (
                f"histogram_quantile(0.5, sum by (model, le) "
                f"(rate(flywheel_serving_request_duration_seconds_bucket{{{M}}}[5m])))",
                "{{model}} p50",
            ),
            (
                f"histogram_quantile(0.99, sum by (model, le) "
                f"(rate(flywheel_serving_request_duration_seconds_bucket{{{M}}}[5m])))",
                "{{model}} p99",
            ),
        ],
        "s",
    ),
    (
        "Errors per second by code",
        "timeseries",
        [
            (
                f"sum by (model, code) (rate(flywheel_serving_errors_total{{{M}}}[5m]))",
                "{{model}} {{code}}",
            )
        ],
        "reqps",
    ),
    (
        "Error share by version",
        "timeseries",
        [
            (
                f"sum by (model, version) "
                f'(rate(flywheel_serving_requests_total{{{M},code!="OK"}}[5m])) '
                f"/ sum by (model, version) (rate(flywheel_serving_requests_total{{{M}}}[5m]))",
                "{{model}} v{{version}}",
            )
        ],
        "percentunit",
    ),
    (
        "Loaded versions (champion / challenger)",
        "table",
        [(f"flywheel_serving_model_info{{{M}}} == 1", "{{model}} v{{version}} {{role}}")],
        "none",
    ),
    (
        "Batch size (mean rows per ONNX call)",
        "timeseries",
        [
            (
                f"sum by (model) (rate(flywheel_serving_batch_size_sum{{{M}}}[5m])) "
                f"/ sum by (model) (rate(flywheel_serving_batch_size_count{{{M}}}[5m]))",
                "{{model}}",
            )
        ],
        "none",
    ),
    (
        "Batcher queue delay p99",
        "timeseries",
        [
            (
                f"histogram_quantile(0.99, sum by (model, le) "
                f"(rate(flywheel_serving_queue_delay_seconds_bucket{{{M}}}[5m])))",
                "{{model}}",
            )
        ],
        "s",
    ),
    (
        "Model swaps and dropped prediction events (1h)",
        "timeseries",
        [
            (
                f"sum by (model) (increase(flywheel_serving_swaps_total{{{M}}}[1h]))",
                "{{model}} swaps",
            ),
            (
                f"sum by (model) "
                f"(increase(flywheel_serving_prediction_events_dropped_total{{{M}}}[1h]))",
                "{{model}} dropped",
            ),
        ],
        "none",
    ),
]

DATA: list[Panel] = [
    (
        "Ingested events per second by outcome",
        "timeseries",
        [
            (
                "sum by (dataset, outcome) (rate(flywheel_ingestion_events_total[5m]))",
                "{{dataset}} {{outcome}}",
            )
        ],
        "ops",
    ),
    (
        "Raw batches per minute and median rows per batch",
        "timeseries",
        [
            (
                "sum by (dataset) (rate(flywheel_ingestion_batches_total[5m])) * 60",
                "{{dataset}} batches/min",
            ),
            (
                "histogram_quantile(0.5, sum by (le) "
                "(rate(flywheel_ingestion_batch_rows_bucket[5m])))",
                "median rows",
            ),
        ],
        "none",
    ),
    (
        "Dead letters (1h) by reason",
        "timeseries",
        [
            (
                "sum by (dataset, reason) (increase(flywheel_ingestion_dlq_total[1h]))",
                "{{dataset}} {{reason}}",
            ),
            (
                "sum by (dataset) (increase(flywheel_monitoring_dlq_total[1h]))",
                "{{dataset}} seen by monitoring",
            ),
        ],
        "none",
    ),
    (
        "Validation verdicts (1h) and quarantined batches",
        "timeseries",
        [
            (
                "sum by (dataset, verdict) (increase(flywheel_validation_batches_total[1h]))",
                "{{dataset}} {{verdict}}",
            ),
            (
                "sum by (dataset) (increase(flywheel_monitoring_quarantined_total[1h]))",
                "{{dataset}} quarantined",
            ),
        ],
        "none",
    ),
    (
        "Row rule failures (1h)",
        "timeseries",
        [
            (
                "sum by (dataset, rule) (increase(flywheel_validation_row_failures_total[1h]))",
                "{{dataset}} {{rule}}",
            )
        ],
        "none",
    ),
    (
        "Dataset rows and new versions (1d)",
        "timeseries",
        [
            ("max by (dataset) (flywheel_validation_dataset_rows)", "{{dataset}} rows"),
            (
                "sum by (dataset) (increase(flywheel_monitoring_dataset_versions_total[1d]))",
                "{{dataset}} versions",
            ),
        ],
        "none",
    ),
    (
        "Freshness: age of the last accepted batch",
        "stat",
        [
            (
                "time() - max by (dataset) (flywheel_validation_last_accepted_timestamp_seconds)",
                "{{dataset}}",
            )
        ],
        "s",
    ),
    (
        "Batch drift at validation (PSI; normed Wasserstein for numeric features)",
        "timeseries",
        [
            (
                'max by (dataset, feature) (flywheel_validation_drift_score{stat="psi"})',
                "{{dataset}} {{feature}} PSI",
            ),
            (
                'max by (dataset, feature) (flywheel_validation_drift_score{stat="wasserstein"})',
                "{{dataset}} {{feature}} W1/std",
            ),
        ],
        "none",
    ),
    (
        "Served drift per feature (PSI; normed Wasserstein; last window)",
        "timeseries",
        [
            (
                f"max by (model, version, feature) "
                f'(flywheel_monitoring_drift_score{{{M},stat="psi"}})',
                "{{model}} v{{version}} {{feature}} PSI",
            ),
            (
                f"max by (model, version, feature) "
                f'(flywheel_monitoring_drift_score{{{M},stat="wasserstein"}})',
                "{{model}} v{{version}} {{feature}} W1/std",
            ),
        ],
        "none",
    ),
    (
        "Consumer lag by group and topic",
        "timeseries",
        [("max by (group, topic) (flywheel_monitoring_consumer_lag)", "{{group}} {{topic}}")],
        "none",
    ),
]

MODEL_QUALITY: list[Panel] = [
    (
        "Live quality per version (sliding window; classifiers)",
        "timeseries",
        [
            (
                f'flywheel_monitoring_live_metric{{{M},metric=~"accuracy|f1|roc_auc"}}',
                "{{model}} v{{version}} {{metric}}",
            )
        ],
        "none",
    ),
    (
        "Live error per version (regressors; MAE, RMSE in label units)",
        "timeseries",
        [
            (
                f'flywheel_monitoring_live_metric{{{M},metric=~"mae|rmse"}}',
                "{{model}} v{{version}} {{metric}}",
            )
        ],
        "none",
    ),
    (
        "Live R² per version (regressors)",
        "timeseries",
        [
            (
                f'flywheel_monitoring_live_metric{{{M},metric="r2"}}',
                "{{model}} v{{version}} r2",
            )
        ],
        "none",
    ),
    (
        "Labelled rows in the window and label join",
        "timeseries",
        [
            (
                f'flywheel_monitoring_live_metric{{{M},metric="labelled_rows"}}',
                "{{model}} v{{version}} rows",
            ),
            (
                f"sum by (model, outcome) (rate(flywheel_monitoring_labels_total{{{M}}}[5m]))",
                "{{model}} {{outcome}}/s",
            ),
        ],
        "none",
    ),
    (
        "Prediction drift (PSI vs first window: probability, predicted class or value)",
        "timeseries",
        [(f"flywheel_monitoring_prediction_drift{{{M}}}", "{{model}} v{{version}}")],
        "none",
    ),
    (
        "Challenger vs champion",
        "timeseries",
        [
            (
                f"flywheel_monitoring_agreement{{{M}}}",
                "{{model}} agreement v{{challenger}}/v{{champion}}",
            ),
            (
                f"flywheel_monitoring_metric_difference{{{M}}}",
                "{{model}} v{{challenger}} - v{{champion}} (primary metric)",
            ),
        ],
        "none",
    ),
    (
        "Fairness: largest gap between groups (rates; regression: relative MAE)",
        "timeseries",
        [
            (
                f"flywheel_monitoring_fairness_gap{{{M}}}",
                "{{model}} v{{version}} {{attribute}} {{metric}}",
            )
        ],
        "none",
    ),
    (
        "Per-group rates",
        "table",
        [
            (
                f"flywheel_monitoring_group_metric{{{M}}}",
                "{{model}} v{{version}} {{group}} {{metric}}",
            )
        ],
        "none",
    ),
    (
        "Actions taken (1h)",
        "timeseries",
        [
            (
                f"sum by (model, action) (increase(flywheel_monitoring_actions_total{{{M}}}[1h]))",
                "{{model}} {{action}}",
            )
        ],
        "none",
    ),
    (
        "Training runs (1d) and holdout primary metric",
        "timeseries",
        [
            (
                f"sum by (model, outcome) (increase(flywheel_training_runs_total{{{M}}}[1d]))",
                "{{model}} {{outcome}}",
            ),
            (f"flywheel_training_primary_metric{{{M}}}", "{{model}} v{{version}} holdout"),
        ],
        "none",
    ),
    (
        "Training phase p90",
        "timeseries",
        [
            (
                f"histogram_quantile(0.9, sum by (model, phase, le) "
                f"(rate(flywheel_training_phase_seconds_bucket{{{M}}}[1h])))",
                "{{model}} {{phase}}",
            )
        ],
        "s",
    ),
]

ANNOTATIONS = [
    (
        "Retrain requests",
        f'increase(flywheel_monitoring_actions_total{{{M},action="retrain"}}[1m]) > 0',
        "orange",
    ),
    (
        "Rollbacks",
        f'increase(flywheel_monitoring_actions_total{{{M},action="rollback"}}[1m]) > 0',
        "red",
    ),
    (
        "Promotions",
        f'increase(flywheel_monitoring_actions_total{{{M},action="promote"}}[1m]) > 0',
        "green",
    ),
]

DASHBOARDS: dict[str, tuple[str, list[Panel], bool]] = {
    "overview": ("Flywheel - overview", OVERVIEW, False),
    "data": ("Flywheel - data", DATA, False),
    "model_quality": ("Flywheel - model quality", MODEL_QUALITY, True),
}


def _panel(index: int, panel: Panel) -> dict[str, Any]:
    title, kind, targets, unit = panel
    width = 24 if kind == "table" else 12
    return {
        "id": index + 1,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {
            "h": 8,
            "w": width,
            "x": (index % 2) * 12 if width == 12 else 0,
            "y": index * 8,
        },
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if kind == "timeseries"
        else {},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "instant": kind == "table",
                "range": kind != "table",
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(uid: str) -> dict[str, Any]:
    """The Grafana JSON model of one dashboard."""
    title, panels, annotate = DASHBOARDS[uid]
    annotations = [
        {
            "name": name,
            "datasource": DATASOURCE,
            "enable": True,
            "expr": expr,
            "iconColor": color,
            "titleFormat": name,
            "textFormat": "{{model}}",
            "step": "60s",
        }
        for name, expr, color in (ANNOTATIONS if annotate else [])
    ]
    return {
        "uid": f"flywheel-{uid.replace('_', '-')}",
        "title": title,
        "tags": ["flywheel"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": annotations},
        "templating": {
            "list": [
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": {
                        "query": "label_values(flywheel_serving_model_info, model)",
                        "refId": "model",
                    },
                    "definition": "label_values(flywheel_serving_model_info, model)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                }
            ]
        },
        "panels": [_panel(i, p) for i, p in enumerate(panels)],
    }


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{uid}.json": json.dumps(dashboard(uid), indent=2) + "\n" for uid in DASHBOARDS}


def main(argv: list[str]) -> int:
    """Write (or with ``--check`` verify) the dashboard files."""
    stale = []
    for name, text in render().items():
        path = OUT / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run python deploy/grafana/generate.py): {stale}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
