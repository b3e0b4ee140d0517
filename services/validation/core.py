"""The transport-free core of validation: a raw batch -> a dataset version or a quarantine.

For each ``data.batches`` event :meth:`Validator.handle` reads the Parquet object, runs
the rules (:mod:`services.validation.rules`) and drift statistics against the
reference profile, stores a JSON report, and either

- **accepts**: the rows passing every row rule join a new immutable dataset version
  (parent's batches + this one) in :class:`~shared.datasets.DatasetCatalog`, or
- **quarantines**: the batch never reaches a dataset version.

Nothing is left out silently: every row failing a row rule is written with its event
id, batch, rule and value to the batch's rejected-rows record (:mod:`shared.rejected`),
summarised in the outcome event's ``rejected`` field and counted by rule.

It returns the event to publish (``DatasetValidated`` or ``BatchQuarantined``).

Reference profiles: every dataset version's ``profile_uri`` is the profile of *that
version's own data* (its newest ``profile_max_rows`` rows), so the first version's
profile is its first accepted batch's. A batch is compared with the profile of the
current (newest) version; monitoring uses the profile of the version a model was
trained on as that model's training reference.

Replays are idempotent: each batch's outcome event is stored under
``validation/<dataset>/outcomes/<batch_id>.json`` and re-published as is when the same
batch arrives again; a batch already in the newest version (a crash before its outcome
was stored) is answered from that version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from shared import rejected
from shared.contract import Contract
from shared.datasets import BatchRef, DatasetCatalog, DatasetVersion
from shared.drift import Profile, build_profile, compare
from shared.events import (
    BatchCreated,
    BatchQuarantined,
    DatasetValidated,
    DriftSummary,
    RejectedRows,
    utcnow,
)
from shared.store import ArtifactStore, canonical_json

from .metrics import ValidationMetrics
from .rules import RuleOutcome, RuleResult, evaluate, profile_frame

Outcome = DatasetValidated | BatchQuarantined


class Validator:
    """Validates batches and maintains dataset versions.

    Args:
        contracts: contract name -> contract.
        store: the artifact store (batches, reports, dataset versions).
        metrics: the service's metrics.
        profile_max_rows: newest rows a version's reference profile is built from.
    """

    def __init__(
        self,
        contracts: Mapping[str, Contract],
        store: ArtifactStore,
        metrics: ValidationMetrics,
        profile_max_rows: int = 200_000,
    ):
        self.contracts = dict(contracts)
        self.store = store
        self.catalog = DatasetCatalog(store)
        self.metrics = metrics
        self.profile_max_rows = profile_max_rows

    def restore(self) -> None:
        """Set the row and freshness gauges from the catalog (at start-up)."""
        for name in self.catalog.names():
            latest = self.catalog.latest(name)
            if latest is not None:
                self.metrics.rows.labels(name).set(latest.rows)
                self.metrics.last_accepted.labels(name).set(latest.created.timestamp())

    # --- the entry point -----------------------------------------------------------------

    def handle(self, batch: BatchCreated) -> Outcome | None:
        """Validate ``batch`` (or answer a replay); the event to publish.

        None when the store does not hold the batch object (a broker that outlived its
        store replays such events): counted as ``missing_batch``, nothing stored, so the
        same event is validated if the object is restored and the event read again.
        """
        name = batch.dataset
        outcome_key = f"validation/{name}/outcomes/{batch.batch_id}.json"
        if self.store.exists(outcome_key):
            self.metrics.replays.labels(name).inc()
            return _load_outcome(self.store.get(outcome_key))
        contract = self.contracts.get(name)
        latest = self.catalog.latest(name) if contract is not None else None
        if latest is not None and any(b.batch_id == batch.batch_id for b in latest.batches):
            self.metrics.replays.labels(name).inc()
            event: Outcome = self._validated_event(latest, batch.batch_id)
        elif contract is None:
            self.metrics.invalid.labels(name, "unknown_dataset").inc()
            rule = RuleResult("unknown_dataset", "batch", batch.rows, 1.0, False)
            event = self._quarantine(batch, [rule], ["unknown_dataset"], None, None)
        elif not self.holds(batch.uri):
            self.metrics.invalid.labels(name, "missing_batch").inc()
            return None
        else:
            event = self._validate(contract, batch, latest)
        self.store.put(outcome_key, event.model_dump_json().encode())
        return event

    def holds(self, uri: str) -> bool:
        """True when ``uri`` names an object of this store that exists."""
        try:
            return self.store.exists(self.store.key_for(uri))
        except ValueError:
            return False  # another store's URI (a new store on the same broker)

    # --- validation ----------------------------------------------------------------------

    def _validate(
        self, contract: Contract, batch: BatchCreated, latest: DatasetVersion | None
    ) -> Outcome:
        name = contract.name
        try:
            table = self.store.get_parquet(batch.uri)
        except (OSError, ValueError, pa.ArrowException) as err:
            self.metrics.invalid.labels(name, "unreadable").inc()
            rule = RuleResult("readable", "batch", batch.rows, 1.0, False, detail=repr(err))
            return self._quarantine(batch, [rule], ["readable"], None, latest)
        reference = self.catalog.profile(latest) if latest is not None else None
        outcome = evaluate(contract, table, reference)
        for r in outcome.rules:
            if r.kind == "row" and r.failed:
                self.metrics.row_failures.labels(name, r.rule).inc(r.failed)
        left_out = self._reject(contract, batch, outcome)
        if outcome.errors or outcome.table is None:
            return self._quarantine(batch, outcome.rules, outcome.errors, None, latest, left_out)
        for rule_name, n in left_out.by_rule.items():
            self.metrics.rejected_rows.labels(name, rule_name).inc(n)
        kept = table.filter(pa.array(outcome.keep))
        drift = self._drift(contract, reference, kept)
        return self._accept(contract, batch, latest, outcome, kept, drift)

    def _reject(
        self, contract: Contract, batch: BatchCreated, outcome: RuleOutcome
    ) -> RejectedRows:
        """Write the rows failing row rules (event id, rule, value) to the store."""
        table = outcome.table
        failing = [r for r in outcome.rules if r.kind == "row" and r.failed and r.mask is not None]
        if table is None or not failing:
            return RejectedRows()
        ids = table.column(contract.id).cast(pa.string())
        parts = []
        for r in failing:
            assert r.mask is not None
            rows = pa.array(np.flatnonzero(r.mask), pa.int64())
            column = _rule_column(contract, r.rule, table.column_names)
            parts.append(
                pa.table(
                    {
                        "event_id": ids.take(rows),
                        "batch_id": pa.array([batch.batch_id] * len(rows), pa.string()),
                        "row": rows,
                        "rule": pa.array([r.rule] * len(rows), pa.string()),
                        "column": pa.array([column] * len(rows), pa.string()),
                        "value": _as_text(table.column(column).take(rows))
                        if column is not None
                        else pa.nulls(len(rows), pa.string()),
                    },
                    schema=rejected.SCHEMA,
                )
            )
        uri = rejected.write(self.store, contract.name, batch.batch_id, pa.concat_tables(parts))
        return RejectedRows(
            rows=int((~outcome.keep).sum()),
            by_rule={r.rule: r.failed for r in failing},
            uri=uri,
        )

    def _rejected_of(self, dataset: str, batch_id: str) -> RejectedRows:
        """The rejected-rows summary of a batch validated before (a replay)."""
        key = rejected.key(dataset, batch_id)
        if not self.store.exists(key):
            return RejectedRows()
        table = self.store.get_parquet(key)
        rules = table.column("rule").to_pylist()
        return RejectedRows(
            rows=len(set(table.column("row").to_pylist())),
            by_rule={rule: rules.count(rule) for rule in dict.fromkeys(rules)},
            uri=self.store.uri_for(key),
        )

    def _drift(self, contract: Contract, ref: Profile | None, kept: pa.Table) -> DriftSummary:
        if ref is None or kept.num_rows == 0:
            return DriftSummary()
        labels = kept.column(contract.label.name).to_numpy(zero_copy_only=False)
        drift = compare(contract, ref, profile_frame(contract, kept), np.asarray(labels))
        for feature, scores in drift.features.items():
            for stat, value in scores.items():
                self.metrics.drift.labels(contract.name, feature, stat).set(value)
        if drift.label_drift is not None:
            self.metrics.drift.labels(contract.name, "__label__", "js").set(drift.label_drift)
        return drift

    def _accept(
        self,
        contract: Contract,
        batch: BatchCreated,
        latest: DatasetVersion | None,
        outcome: RuleOutcome,
        kept: pa.Table,
        drift: DriftSummary,
    ) -> DatasetValidated:
        name = contract.name
        report_uri = self._report(batch, "accept", outcome.rules, [], drift, latest, kept.num_rows)
        if kept.num_rows == batch.rows:
            sha, uri = batch.sha256, batch.uri
        else:
            sha, uri = self.store.put_parquet(f"datasets/{name}/batches", kept)
        ref = BatchRef(
            batch_id=batch.batch_id,
            uri=uri,
            sha256=sha,
            rows=kept.num_rows,
            raw_uri=batch.uri,
            report_uri=report_uri,
            offsets=batch.offsets,
            min_event_time=batch.min_event_time,
            max_event_time=batch.max_event_time,
        )
        batches = [*(latest.batches if latest else []), ref]
        profile_uri = self.catalog.put_profile(name, self._profile(contract, batches, kept))
        version = self.catalog.add(
            DatasetVersion(
                dataset=name,
                parent=latest.id if latest else None,
                batches=batches,
                rows=(latest.rows if latest else 0) + kept.num_rows,
                profile_uri=profile_uri,
                drift=drift,
            )
        )
        self.metrics.batches.labels(name, "accept").inc()
        self.metrics.rows.labels(name).set(version.rows)
        self.metrics.last_accepted.labels(name).set(time.time())
        return self._validated_event(version, batch.batch_id)

    def _profile(self, contract: Contract, batches: list[BatchRef], newest: pa.Table) -> Profile:
        """Profile of the version's newest ``profile_max_rows`` rows."""
        tables = [newest]
        rows = newest.num_rows
        for ref in reversed(batches[:-1]):
            if rows >= self.profile_max_rows:
                break
            tables.append(self.store.get_parquet(ref.uri))
            rows += tables[-1].num_rows
        cols = [*contract.feature_names, contract.label.name]
        table = pa.concat_tables(
            [t.select(cols) for t in reversed(tables)], promote_options="permissive"
        )
        table = table.slice(max(0, table.num_rows - self.profile_max_rows))
        labels = np.asarray(table.column(contract.label.name).to_numpy(zero_copy_only=False))
        return build_profile(contract, profile_frame(contract, table), labels)

    def _validated_event(self, version: DatasetVersion, batch_id: str) -> DatasetValidated:
        ref = next(b for b in version.batches if b.batch_id == batch_id)
        return DatasetValidated(
            dataset=version.dataset,
            dataset_version=version.id,
            parent=version.parent,
            rows=version.rows,
            new_rows=ref.rows,
            batch_ids=[b.batch_id for b in version.batches],
            report_uri=ref.report_uri,
            drift=version.drift,
            rejected=self._rejected_of(version.dataset, batch_id),
        )

    def _quarantine(
        self,
        batch: BatchCreated,
        rules: list[RuleResult],
        failed: list[str],
        drift: DriftSummary | None,
        latest: DatasetVersion | None,
        left_out: RejectedRows | None = None,
    ) -> BatchQuarantined:
        report_uri = self._report(batch, "quarantine", rules, failed, drift, latest, 0)
        self.metrics.batches.labels(batch.dataset, "quarantine").inc()
        details = [
            f"{r.rule} ({r.failed} failed, share {r.share:.3g})" for r in rules if r.rule in failed
        ]
        return BatchQuarantined(
            dataset=batch.dataset,
            batch_id=batch.batch_id,
            failed_rules=failed,
            report_uri=report_uri,
            reason="; ".join(details) or "failed validation",
            rejected=left_out or RejectedRows(),
        )

    def _report(
        self,
        batch: BatchCreated,
        verdict: str,
        rules: list[RuleResult],
        failed: list[str],
        drift: DriftSummary | None,
        latest: DatasetVersion | None,
        accepted_rows: int,
    ) -> str:
        report: dict[str, Any] = {
            "dataset": batch.dataset,
            "batch_id": batch.batch_id,
            "batch_uri": batch.uri,
            "rows": batch.rows,
            "accepted_rows": accepted_rows,
            "excluded_rows": batch.rows - accepted_rows if verdict == "accept" else batch.rows,
            "verdict": verdict,
            "failed_rules": failed,
            "rules": [r.as_dict() for r in rules],
            "drift": (drift or DriftSummary()).model_dump(mode="json"),
            "reference": {
                "dataset_version": latest.id if latest else None,
                "profile_uri": latest.profile_uri if latest else None,
            },
            "created": utcnow().isoformat(),
        }
        _, uri = self.store.put_content(
            f"validation/{batch.dataset}/reports", canonical_json(report), ".json"
        )
        return uri


def _rule_column(contract: Contract, rule: str, columns: list[str]) -> str | None:
    """The column a row rule reads (``range:x`` -> ``x``; None: a rule of the whole row)."""
    if rule == "label_values":
        return contract.label.name
    if rule == "duplicate_id":
        return contract.id
    column = rule.split(":", 1)[-1]
    return column if ":" in rule and column in columns else None


def _as_text(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Values as text for the record (nulls stay null)."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    try:
        return values.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.chunked_array(
            [pa.array([None if v is None else str(v) for v in values.to_pylist()], pa.string())]
        )


def _load_outcome(data: bytes) -> Outcome:
    body = json.loads(data)
    if "dataset_version" in body:
        return DatasetValidated.model_validate(body)
    return BatchQuarantined.model_validate(body)
