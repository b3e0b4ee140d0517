"""The training core's idempotent retraining and its failed-run records and retries."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from services.training.core import RetryPolicy, TrainingCore
from shared.cli.main import app
from shared.contract import Contract
from shared.datasets import DatasetCatalog
from shared.events import RetrainRequest
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.clock import Clock
from tests.unit.test_training_core import SEARCH_ONLY, Recorder, validated
from tests.unit.test_training_core import make_core as core_of
from tests.unit.test_training_data import add_dataset, toy_contract, toy_table


def make_core(
    store: ArtifactStore, contract: Contract, clock: Clock | None = None
) -> tuple[TrainingCore, Recorder, CollectorRegistry]:
    retry = RetryPolicy(base_s=10, max_s=25, attempts=3)
    return core_of(store, contract, retry=retry, clock=clock or Clock(1_000_000.0))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    """A store holding toy v1, searched, trained and promoted."""
    store = ArtifactStore(f"file://{tmp_path / 'trained'}")
    version = add_dataset(store, "toy", [toy_table(2000)])
    core, _, _ = make_core(store, toy_contract(**SEARCH_ONLY))
    core.submit_validated(validated(version.id, 2000, 2000), lambda: None)
    assert asyncio.run(core.run("toy")).outcome == "promoted"
    return store


def drift_request(n: int) -> RetrainRequest:
    """Monitoring's request after one more cool-down of persistent drift."""
    return RetrainRequest(
        model="toy",
        reason=f"drift on x (window {n})",
        requested_by="monitoring",
        evidence={"trigger": "drift", "windows": [n]},
    )


async def test_persistent_drift_on_unchanged_data_retrains_once_new_data_arrives(
    store: ArtifactStore,
) -> None:
    core, recorder, metrics = make_core(store, toy_contract())
    registry = Registry(store)
    outcomes = []
    for n in range(10):  # ten cool-downs, the dataset version unchanged
        core.submit_request(drift_request(n), lambda: None)
        outcomes.append(await core.run("toy"))
    assert [o.outcome for o in outcomes] == ["deferred"] * 10
    assert "waiting for new data" in outcomes[0].detail
    assert registry.version_numbers("toy") == [1]
    waiting = [t for t in registry.triggers("toy") if t.get("status") == "waiting"]
    assert len(waiting) == 1  # one record, however often the drift is reported
    deferred = {"model": "toy", "outcome": "deferred"}
    assert metrics.get_sample_value("flywheel_training_runs_total", deferred) == 10

    # A few new rows (below min_new_rows) are new data: the waiting drift trains once.
    [v1] = DatasetCatalog(store).versions("toy")
    v2 = add_dataset(store, "toy", [toy_table(2000), toy_table(40, 2, 2000)], parent=v1.id)
    core.submit_validated(validated(v2.id, 2040, 40), lambda: None)
    trained = await core.run("toy")
    assert trained.outcome in {"promoted", "refused"}, trained
    manifest = registry.get("toy", 2)
    assert manifest.dataset_version == v2.id
    assert "drift on x" in manifest.reason
    assert "waiting since" in manifest.reason
    for n in range(10, 20):  # the drift goes on: v2 is trained on the newest data
        core.submit_request(drift_request(n), lambda: None)
        assert (await core.run("toy")).outcome == "deferred"
    core.submit_validated(validated(v2.id, 2040, 40), lambda: None)  # a replay
    assert (await core.run("toy")).outcome == "skipped"
    assert registry.version_numbers("toy") == [1, 2]
    v3 = add_dataset(store, "toy", [toy_table(2000), toy_table(80, 2, 2000)], parent=v2.id)
    core.submit_validated(validated(v3.id, 2080, 40), lambda: None)
    assert (await core.run("toy")).outcome != "deferred"  # still drifting: v3 trains once
    assert registry.get("toy", 3).dataset_version == v3.id
    assert len(recorder.on("models.registered")) == 2


def broken_contract() -> Contract:
    """The toy contract naming a feature the data does not have: training fails."""
    body = toy_contract().model_dump(mode="json")
    body["features"].append({"name": "missing", "type": "float"})
    return Contract.model_validate(body)


async def test_a_failed_run_is_recorded_counted_and_retried_with_back_off(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(800)])
    clock = Clock(1_000_000.0)
    core, _, metrics = make_core(store, broken_contract(), clock)
    acked: list[int] = []
    core.submit_validated(validated(version.id, 800, 800), lambda: acked.append(1))
    failed = await core.run("toy")
    assert failed.outcome == "failed"
    assert acked == [1]  # acknowledged: the retry carries the reasons, offsets move on
    registry = Registry(store)
    record = registry.last_run("toy")
    assert record is not None
    assert (record["status"], record["phase"], record["attempt"]) == ("failed", "prepare", 1)
    assert "missing" in record["error"]
    assert record["dataset_version"] == version.id
    assert [r["kind"] for r in record["reasons"]] == ["first-model"]
    assert record["retry_at"] == clock.now + 10
    assert (
        metrics.get_sample_value(
            "flywheel_training_runs_total", {"model": "toy", "outcome": "failed"}
        )
        == 1
    )
    phase = {"model": "toy", "phase": "prepare"}
    assert metrics.get_sample_value("flywheel_training_run_failures_total", phase) == 1
    assert metrics.get_sample_value("flywheel_training_consecutive_failures", {"model": "toy"}) == 1

    # Back-off: not ready before retry_at, then the retry fails again and waits twice as long.
    assert core.next_ready() == (None, 10)
    clock.now += 10
    assert core.next_ready() == ("toy", None)
    assert (await core.run("toy")).outcome == "failed"
    second = registry.last_run("toy")
    assert second is not None
    assert second["attempt"] == 2
    assert second["retry_at"] == clock.now + 20

    # A restarted service resumes the back-off from the record...
    restarted, _, _ = make_core(store, broken_contract(), clock)
    restarted.contracts["toy"] = toy_contract()  # ...and the contract was fixed meanwhile
    restarted.restore()  # what start() does first
    assert restarted.next_ready() == (None, 20)
    clock.now += 20
    assert restarted.next_ready() == ("toy", None)
    outcome = await restarted.run("toy")
    assert outcome.outcome == "promoted", outcome
    assert registry.get("toy", 1).reason.startswith("first model")
    last = registry.last_run("toy")
    assert last is not None
    assert last["status"] == "completed"


async def test_retries_stop_after_the_last_attempt(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    version = add_dataset(store, "toy", [toy_table(800)])
    clock = Clock(1_000_000.0)
    core, _, metrics = make_core(store, broken_contract(), clock)
    core.submit_validated(validated(version.id, 800, 800), lambda: None)
    details = []
    for _ in range(4):
        model, wait = core.next_ready()
        if model is None:
            assert wait is not None
            clock.now += wait
        details.append((await core.run("toy")).detail)
    assert "no automatic retry left" in details[-1]
    assert core.pending == {}
    record = Registry(store).last_run("toy")
    assert record is not None
    assert (record["retry_at"], record["attempt"]) == (None, 4)
    # The next trigger still tries again; the failures keep counting.
    core.submit_validated(validated(version.id, 800, 800), lambda: None)
    assert core.next_ready() == ("toy", None)
    assert (await core.run("toy")).outcome == "failed"
    labels = {"model": "toy"}
    assert metrics.get_sample_value("flywheel_training_consecutive_failures", labels) == 5
    # Every model listing says so, even before a first version exists.
    env = {"FLYWHEEL_STORE": store.uri}
    for args in (["models"], ["models", "toy"]):
        shown = CliRunner().invoke(app, args, env=env)
        text = " ".join(shown.output.split())
        assert "toy: last run failed:" in text, args
        assert "['missing'] (phase prepare, attempt 1," in text
