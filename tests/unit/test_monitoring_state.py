"""Monitoring's windows and triggers survive a restart through the partition snapshots.

A core checkpoints mid-feedback, goes on (work lost with the "kill"), and a fresh core
restores the snapshots and reads the rest: its live metrics, drift windows and actions
equal those of one core that read everything without stopping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import structlog
from prometheus_client import CollectorRegistry

from services.monitoring.core import Limits, MonitoringCore
from services.monitoring.join import LabelJoin
from services.monitoring.metrics import MonitoringMetrics
from services.monitoring.predlog import PredictionLog
from services.monitoring.state import STREAM, Partitioner, PartitionSnapshots
from services.monitoring.testing import load_car_loan, prediction_events, seed_version
from services.monitoring.windows import PartitionedWindow, Stamps
from shared.contract import Contract, load_contract
from shared.datasets import DatasetCatalog
from shared.events import Feedback, Prediction
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.clock import Clock
from tests.conftest import CONTRACTS, need_data

PARTITIONS = 4
WINDOW = 500


@pytest.fixture(scope="module")
def car_loan() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = need_data("synthetic_car_loan_reference.csv")[0].parent
    return load_car_loan(data)


@pytest.fixture
def contract() -> Contract:
    return load_contract(CONTRACTS / "car_loan.yaml")


def _core(store: ArtifactStore, contract: Contract, clock: Clock) -> tuple[MonitoringCore, Any]:
    registry = CollectorRegistry()
    core = MonitoringCore(
        {contract.name: contract},
        Registry(store),
        DatasetCatalog(store),
        MonitoringMetrics(registry),
        LabelJoin(100_000, 3600, Partitioner(PARTITIONS)),
        PredictionLog(store, flush_rows=10**6, flush_s=3600),
        structlog.get_logger("test"),
        Limits(eval_every_labels=50, window_rows=WINDOW),
        clock=clock,
    )
    core.load_aliases()
    return core, registry


def _gauges(registry: CollectorRegistry) -> dict[tuple[Any, ...], float]:
    """Every live-quality and drift gauge sample, by name and labels."""
    names = {
        "flywheel_monitoring_live_metric",
        "flywheel_monitoring_group_metric",
        "flywheel_monitoring_fairness_gap",
        "flywheel_monitoring_drift_score",
        "flywheel_monitoring_prediction_drift",
    }
    out: dict[tuple[Any, ...], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in names:
                out[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return out


def _live(name: str) -> tuple[Any, ...]:
    labels = {"model": "car_loan", "version": "1", "metric": name}
    return ("flywheel_monitoring_live_metric", *sorted(labels.items()))


def _retrains(registry: CollectorRegistry) -> float:
    value = registry.get_sample_value(
        "flywheel_monitoring_actions_total", {"model": "car_loan", "action": "retrain"}
    )
    return value or 0.0


def _checkpoint(snapshots: PartitionSnapshots, core: MonitoringCore, at: int) -> dict[int, Any]:
    """Every partition saved at offsets ``at`` (what the adapter commits)."""
    offsets = dict.fromkeys(STREAM, at)
    for k in range(PARTITIONS):
        snapshots.save(core, k, offsets)
    return {k: offsets for k in range(PARTITIONS)}


def _restore(snapshots: PartitionSnapshots, core: MonitoringCore, offsets: dict[int, Any]) -> None:
    found = [snapshots.read(k, o) for k, o in offsets.items()]
    snapshots.restore(core, [s for s in found if s is not None])


def _traffic(
    store: ArtifactStore, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> tuple[list[Prediction], list[Prediction], list[Feedback]]:
    """Calm then drifted rows (two drifted windows fire a retrain), served in two parts;
    the labels of all of them."""
    reference, analysis = car_loan
    manifest = seed_version(store, contract, reference.iloc[:20_000], 1)
    rows = pd.concat([analysis.iloc[:1000], analysis.iloc[-2250:]])
    served = list(prediction_events(contract, rows, manifest))
    truth = rows.set_index("id")["repaid"]
    labels = [Feedback(prediction_id=p.id, label=int(truth[int(p.request_id)])) for p in served]
    return served[:2250], served[2250:], labels


def test_windows_and_triggers_resume_after_a_restart_mid_feedback(
    tmp_path: Path, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    first, second, labels = _traffic(store, contract, car_loan)

    # Without the kill: one core reads everything.
    steady, steady_reg = _core(store, contract, Clock(1000.0))
    steady.on_predictions(first)
    steady.on_feedback(labels[:2000])
    before = _retrains(steady_reg)
    steady.on_predictions(second)
    steady.on_feedback(labels[2000:2300])

    # With the kill: checkpoint mid-feedback, go on a little (lost), then a new process.
    killed, _ = _core(store, contract, Clock(1000.0))
    killed.on_predictions(first)
    killed.on_feedback(labels[:2000])
    assert _retrains(steady_reg) == before == 1  # two drifted windows fired: a cool-down runs
    assert killed.models["car_loan"].versions[1].drift.rows == 250  # type: ignore[union-attr]
    snapshots = PartitionSnapshots(store, "g", clock=killed.clock)
    offsets = _checkpoint(snapshots, killed, 100)
    killed.on_feedback(labels[2000:2100])  # not checkpointed: replayed after the restart

    restarted, restarted_reg = _core(store, contract, Clock(50.0))
    _restore(PartitionSnapshots(store, "g", clock=restarted.clock), restarted, offsets)
    vs = restarted.models["car_loan"].versions[1]
    assert len(vs.quality) == WINDOW  # the last checkpoint's window, not an empty one
    assert vs.drift is not None
    assert vs.drift.rows == 250  # the open drift window's 250 rows
    fired = restarted.models["car_loan"].drift_trigger.last_fired
    assert fired == pytest.approx(50.0 - (1000.0 - 1000.0), abs=1.0)  # on this clock
    assert _gauges(restarted_reg)[_live("labelled_rows")] == float(
        WINDOW
    )  # republished at once, no new label needed

    restarted.on_predictions(second)
    restarted.on_feedback(labels[2000:2300])
    expected, live = _gauges(steady_reg), _gauges(restarted_reg)
    # A group gauge stays at its last value once the group falls under min_group_rows:
    # the steady run may hold such a series from before the kill, nothing else differs.
    assert set(live) <= set(expected)
    assert {k for k in expected if "live_metric" in k[0]} == {
        k for k in live if "live_metric" in k[0]
    }
    assert live == pytest.approx({k: expected[k] for k in live})
    assert _live("roc_auc") in expected
    # The cool-down came through the restart: the drifted windows after it fire nothing,
    # as without the kill.
    assert _retrains(restarted_reg) == _retrains(steady_reg) - before


def test_a_rebalance_drops_and_restores_partition_shares(
    tmp_path: Path, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    first, _, labels = _traffic(store, contract, car_loan)
    core, registry = _core(store, contract, Clock(1000.0))
    core.on_predictions(first[:1000])
    core.on_feedback(labels[:300])  # the quality window is not full: every row counts
    snapshots = PartitionSnapshots(store, "g", clock=core.clock)
    offsets = _checkpoint(snapshots, core, 7)
    vs = core.models["car_loan"].versions[1]
    whole = _gauges(registry)
    part = Partitioner(PARTITIONS)
    kept = sum(1 for f in labels[:300] if part(f.prediction_id) in (0, 2))

    core.drop_partitions({1, 3})  # another replica took them
    assert len(vs.quality) == kept
    assert _gauges(registry)[_live("labelled_rows")] == float(kept)
    _restore(snapshots, core, {k: offsets[k] for k in (1, 3)})  # and gave them back
    assert len(vs.quality) == 300
    assert _gauges(registry) == pytest.approx(whole)


def test_snapshot_formats_old_readable_unknown_refused(tmp_path: Path, contract: Contract) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    snapshots = PartitionSnapshots(store, "g", clock=Clock(10.0))
    old = {"format": 1, "partition": 0, "offsets": {}, "pending": [], "early": [], "joined": []}
    store.put(snapshots.key(0, {"predictions": 1}), json.dumps(old).encode())
    snap = snapshots.read(0, {"predictions": 1})
    assert snap is not None
    assert snap.format == 1
    core, _ = _core(store, contract, Clock(10.0))
    snapshots.restore(core, [snap])  # the join comes back; the windows start empty
    assert snap.part.windows == []
    store.put(snapshots.key(0, {"predictions": 2}), json.dumps({**old, "format": 9}).encode())
    with pytest.raises(ValueError, match=r"0/2--1\.json: snapshot format 9"):
        snapshots.read(0, {"predictions": 2})


def test_a_partitioned_window_keeps_the_newest_rows_over_restored_partitions() -> None:
    stamps = Stamps(clock=lambda: 0)
    w: PartitionedWindow[str] = PartitionedWindow(4)
    for i in range(6):
        w.append(f"r{i}", i % 2, stamps())
    assert list(w) == ["r2", "r3", "r4", "r5"]
    odd = w.of(1)
    older = [(0, "r-old")]  # a stale snapshot's row older than everything held
    w.drop([1])
    assert list(w) == ["r2", "r4"]
    w.restore(1, older + odd)
    assert list(w) == ["r2", "r3", "r4", "r5"]  # the stale row fell out: newest 4 kept


def test_a_promote_cooldown_saved_before_a_new_deployment_is_not_restored(
    tmp_path: Path, contract: Contract, car_loan: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    # Saved while v1 was champion, restored once v2 is: v2's promote/rollback decisions
    # owe nothing to v1's cool-down (on_deployment clears it; a restart must not bring it
    # back). The drift cool-down belongs to the model and comes through.
    store = ArtifactStore(f"file://{tmp_path}")
    reference, _ = car_loan
    seed_version(store, contract, reference.iloc[:5000], 1)
    before, _ = _core(store, contract, Clock(1000.0))
    for trigger in before.models["car_loan"].triggers().values():
        trigger.last_fired = 990.0
    snapshots = PartitionSnapshots(store, "g", clock=before.clock)
    offsets = _checkpoint(snapshots, before, 10)

    seed_version(store, contract, reference.iloc[5000:10000], 2)  # the new champion
    after, _ = _core(store, contract, Clock(1000.0))
    assert after.models["car_loan"].champion == 2
    _restore(PartitionSnapshots(store, "g", clock=after.clock), after, offsets)
    fired = {kind: t.last_fired for kind, t in after.models["car_loan"].triggers().items()}
    assert fired["promote"] is None
    assert fired["rollback"] is None
    assert fired["drift"] == pytest.approx(990.0, abs=1.0)
    assert fired["quality"] == pytest.approx(990.0, abs=1.0)

    # Restored under the arrangement it was saved with, every cool-down comes back.
    same, _ = _core(store, contract, Clock(1000.0))
    later = PartitionSnapshots(store, "g", clock=same.clock)
    for trigger in same.models["car_loan"].triggers().values():
        trigger.last_fired = 995.0
    offsets = _checkpoint(later, same, 20)
    again, _ = _core(store, contract, Clock(1000.0))
    _restore(PartitionSnapshots(store, "g", clock=again.clock), again, offsets)
    assert all(
        t.last_fired == pytest.approx(995.0, abs=1.0)
        for t in again.models["car_loan"].triggers().values()
    )
