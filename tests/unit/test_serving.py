"""Serving core without Kafka or gRPC: inputs, batching, routing, repository, events."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.serving import encoding, events
from services.serving.batching import AdaptiveBatcher
from services.serving.encoding import Answered, encode, group
from services.serving.errors import ServingError
from services.serving.events import YIELD_S, Message, PredictionPublisher
from services.serving.inputs import SMALL_ROWS, InputSpec
from services.serving.metrics import ServingMetrics
from services.serving.model import LoadedModel
from services.serving.repository import ModelRepository
from services.serving.routing import in_canary
from services.serving.tensors import PredictionIds, Tensor, decode_raw, encode_bytes
from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared.contract import Contract, load_contract
from shared.events import (
    Deployment,
    PredictionGroup,
    decode_predictions,
    prediction_id,
    routing_key,
)
from shared.features import onnx_feeds, to_frame
from shared.registry import Gate, Registry
from shared.signing import sign
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, DEPLOY_KEY, need_data
from tests.deploying import decide

MODEL = "census_employment"
LOG = structlog.get_logger()


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract(CONTRACTS / f"{MODEL}.yaml")


@pytest.fixture(scope="module")
def models(contract: Contract) -> dict[str, Any]:
    need_data("employment_MA_reference.pq")
    rows = census_rows(DATA, 300)
    _, onnx1 = fit_model(contract, rows)
    _, onnx2 = fit_model(contract, census_rows(DATA, 300, offset=300), c=0.05)
    return {"rows": census_rows(DATA, 20, offset=4000), "onnx1": onnx1, "onnx2": onnx2}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(ArtifactStore(f"file://{tmp_path / 'store'}"))


def matrix_tensor(contract: Contract, rows: Any) -> Tensor:
    x = feature_matrix(contract, rows).astype(np.float32)
    return Tensor("input", "FP32", x.shape, x.ravel())


def columnar(contract: Contract, rows: Any) -> list[Tensor]:
    frame = to_frame(contract, {f: rows[f].to_numpy() for f in contract.feature_names})
    out = []
    for f in contract.features:
        col = frame[f.name].to_numpy()
        if f.is_numeric:
            out.append(Tensor(f.name, "FP64", (len(col),), col.astype(np.float64)))
        else:
            values = np.array([str(v).encode() for v in col], dtype=object)
            out.append(Tensor(f.name, "BYTES", (len(col), 1), values))
    return out


# --- inputs ---------------------------------------------------------------------------


def test_matrix_and_columnar_inputs_give_the_training_feeds(
    contract: Contract, models: dict[str, Any]
) -> None:
    rows = models["rows"]
    spec = InputSpec(contract, 64)
    expected = onnx_feeds(
        contract, to_frame(contract, {f: rows[f].to_numpy() for f in contract.feature_names})
    )
    for feeds, n in (
        spec.feeds([matrix_tensor(contract, rows)]),
        spec.feeds(columnar(contract, rows)),
    ):
        assert n == len(rows)
        for name, want in expected.items():
            np.testing.assert_array_equal(feeds[name], want, err_msg=name)
            assert feeds[name].shape == (len(rows), 1)


@pytest.mark.parametrize("n", [1, SMALL_ROWS, SMALL_ROWS + 1, 20])
def test_the_matrix_gives_the_same_feeds_and_errors_at_every_batch_size(
    contract: Contract, models: dict[str, Any], n: int
) -> None:
    # Small batches decode categories by dict lookups, larger ones vectorised: both
    # must give the training feeds, and name the same bad value the same way.
    rows = models["rows"][:n]
    spec = InputSpec(contract, 64)
    expected = onnx_feeds(
        contract, to_frame(contract, {f: rows[f].to_numpy() for f in contract.feature_names})
    )
    feeds, got = spec.feeds([matrix_tensor(contract, rows)])
    assert got == n
    for name, want in expected.items():
        np.testing.assert_array_equal(feeds[name], want, err_msg=name)
        assert feeds[name].shape == (n, 1)
        assert feeds[name].flags.c_contiguous  # an ONNX feed as it is
    x = feature_matrix(contract, rows).astype(np.float32)
    schl, agep = contract.feature_names.index("SCHL"), contract.feature_names.index("AGEP")
    last = n - 1
    for column, value, needle in [
        (schl, 99.0, f"column 'SCHL' row {last}: 99.0 is not one of the category's values"),
        (schl, np.nan, f"column 'SCHL' row {last}: NaN, but 'SCHL' is not nullable"),
        (agep, np.nan, f"column 'AGEP' row {last}: NaN, but 'AGEP' is not nullable"),
    ]:
        bad = x.copy()
        bad[last, column] = value
        with pytest.raises(ServingError) as err:
            spec.feeds([Tensor("input", "FP32", bad.shape, bad.ravel())])
        assert needle in err.value.message


def test_a_non_numeric_vocabulary_is_encoded_by_index() -> None:
    contract = load_contract(CONTRACTS / "car_loan.yaml")
    spec = InputSpec(contract, 8)
    #        car_value salary debt  length prev  down  tenure
    x = np.array([[10000, 1, 0.3, 36, 1, 4, 2.0]], dtype=np.float64)
    feeds, _ = spec.feeds([Tensor("input", "FP64", x.shape, x.ravel())])
    assert feeds["salary_range"][0, 0] == "20K - 40K €"
    assert feeds["size_of_downpayment"][0, 0] == "40%"
    assert spec.matrix_input is not None
    assert json.loads(spec.matrix_input)["category_encoding"]["salary_range"] == "index"
    assert [t.name for t in spec.tensors] == contract.feature_names
    x[0, 1] = 4  # only four salary bands: index 4 is out of range
    with pytest.raises(ServingError, match="'salary_range' row 0"):
        spec.feeds([Tensor("input", "FP64", x.shape, x.ravel())])


def _bad(contract: Contract, rows: Any, case: str) -> list[Tensor]:
    tensors = columnar(contract, rows)
    if case == "unknown":
        return [*tensors, Tensor("extra", "FP32", (len(rows),), np.zeros(len(rows)))]
    if case == "missing":
        return tensors[1:]
    if case == "duplicate":
        return [*tensors, tensors[0]]
    if case == "rows":
        t = tensors[0]
        return [Tensor(t.name, t.datatype, (1,), t.values[:1]), *tensors[1:]]
    if case == "vocab":
        t = tensors[1]
        return [
            tensors[0],
            Tensor(t.name, "BYTES", t.shape, np.array([b"99"] * len(rows))),
            *tensors[2:],
        ]
    if case == "category_dtype":
        t = tensors[1]
        return [tensors[0], Tensor(t.name, "INT64", (len(rows),), np.ones(len(rows))), *tensors[2:]]
    if case == "numeric_dtype":
        t = tensors[0]
        return [Tensor(t.name, "BYTES", t.shape, np.array([b"1"] * len(rows))), *tensors[1:]]
    if case == "utf8":
        t = tensors[1]
        return [
            tensors[0],
            Tensor(t.name, "BYTES", t.shape, np.array([b"\xff"] * len(rows))),
            *tensors[2:],
        ]
    if case == "nan":
        t = tensors[0]
        return [Tensor(t.name, "FP64", t.shape, np.full(len(rows), np.nan)), *tensors[1:]]
    if case == "shape":
        t = tensors[0]
        return [Tensor(t.name, t.datatype, (len(rows), 2), np.zeros(2 * len(rows))), *tensors[1:]]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unknown", "input 'extra': unknown tensor"),
        ("missing", "input 'AGEP': missing"),
        ("duplicate", "input 'AGEP': sent more than once"),
        ("rows", "rows, but other inputs have"),
        ("vocab", "input 'SCHL': row 0: '99' is not one of the category's values"),
        ("category_dtype", "input 'SCHL': datatype INT64 is not accepted for a category"),
        ("numeric_dtype", "input 'AGEP': datatype BYTES is not accepted"),
        ("utf8", "input 'SCHL': row 0: not valid UTF-8"),
        ("nan", "input 'AGEP': row 0: NaN, but 'AGEP' is not nullable"),
        ("shape", "input 'AGEP': shape [3, 2] is not [N] or [N, 1]"),
    ],
)
def test_bad_columnar_inputs_are_rejected_naming_the_tensor(
    contract: Contract, models: dict[str, Any], case: str, needle: str
) -> None:
    spec = InputSpec(contract, 64)
    with pytest.raises(ServingError) as err:
        spec.feeds(_bad(contract, models["rows"][:3], case))
    assert err.value.code == "INVALID_ARGUMENT"
    assert needle in err.value.message


@pytest.mark.parametrize("rows", [1, 2, 10, 11, 101, 4096])
def test_prediction_ids_are_the_prediction_ids_in_every_encoding(rows: int) -> None:
    key = uuid.uuid4().hex[:16]
    ids = PredictionIds(key, rows)
    want = [prediction_id(key, i).encode() for i in range(rows)]
    assert list(ids) == want
    assert (len(ids), ids[0], ids[-1], ids[1:3]) == (rows, want[0], want[-1], want[1:3])
    # The templated raw layout is the per-element one, and decodes back to the ids.
    assert encode_bytes(ids) == encode_bytes(want)
    assert decode_raw("ids", "BYTES", (rows,), encode_bytes(ids)).tolist() == want
    with pytest.raises(IndexError):
        ids[rows]


def test_raw_contents_are_checked_against_the_shape() -> None:
    ok = decode_raw("x", "FP32", (2, 2), np.arange(4, dtype=np.float32).tobytes())
    assert ok.tolist() == [0, 1, 2, 3]
    with pytest.raises(ServingError, match="raw contents hold 12 bytes, but shape \\[2, 2\\]"):
        decode_raw("x", "FP32", (2, 2), b"\0" * 12)
    assert decode_raw("s", "BYTES", (2,), encode_bytes([b"a", b"bc"])).tolist() == [b"a", b"bc"]
    with pytest.raises(ServingError, match="input 's': raw BYTES element 1 runs past"):
        decode_raw("s", "BYTES", (2,), encode_bytes([b"a", b"bc"])[:-1])
    with pytest.raises(ServingError, match="negative dimension"):
        decode_raw("x", "FP32", (-1, 2), b"")
    with pytest.raises(ServingError, match="unknown datatype 'FP8'"):
        decode_raw("x", "FP8", (1,), b"\0")


# --- batching and routing --------------------------------------------------------------


async def test_the_batcher_merges_concurrent_requests_and_splits_outputs(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    manifest = register_model(registry, contract, models["onnx1"], dataset_version="d1")
    spec = InputSpec(contract, 64)
    model = LoadedModel(manifest, models["onnx1"], spec, 1)
    calls: list[tuple[int, float]] = []
    batcher = AdaptiveBatcher(model, 64, 0.05, lambda rows, waited: calls.append((rows, waited)))
    rows = models["rows"]
    parts = [spec.feeds([matrix_tensor(contract, rows[i : i + 4])]) for i in range(0, 20, 4)]
    results = await asyncio.gather(*(batcher.predict(f, n) for f, n in parts))
    assert [c[0] for c in calls] == [20]  # one ORT call for five requests
    for (feeds, _), got in zip(parts, results, strict=True):
        want = model.predict(feeds)
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-6)
    await batcher.close()
    # A request reaching a closed (retired) batcher is still answered.
    feeds, n = parts[0]
    assert (await batcher.predict(feeds, n))["label"].shape == (4,)


def test_canary_share_is_close_to_the_percentage_and_sticky() -> None:
    ids = [uuid.uuid4().hex for _ in range(20_000)]
    share = sum(in_canary(i, 25.0) for i in ids) / len(ids)
    assert abs(share - 0.25) < 0.015  # ~5 standard deviations
    assert all(in_canary(i, 25.0) == in_canary(i, 25.0) for i in ids[:100])
    assert not any(in_canary(i, 0.0) for i in ids[:1000])
    assert all(in_canary(i, 100.0) for i in ids[:1000])


# --- repository ------------------------------------------------------------------------


def _repository(
    contract: Contract, registry: Registry, prom: CollectorRegistry | None = None
) -> tuple[ModelRepository, ServingMetrics]:
    metrics = ServingMetrics(prom or CollectorRegistry())
    repo = ModelRepository(
        {MODEL: contract}, registry, metrics, LOG, max_batch_size=64, deploy_key=DEPLOY_KEY
    )
    return repo, metrics


def _forged(action: str, version: int, key: bytes | None = DEPLOY_KEY, **kw: Any) -> Deployment:
    """A deployment no registry decision stands behind (signed with ``key`` if given)."""
    event = Deployment(model=MODEL, action=action, version=version, reason="forged", **kw)  # type: ignore[arg-type]
    return sign(event, key) if key else event


def _refusals(prom: CollectorRegistry, reason: str) -> float:
    value = prom.get_sample_value(
        "flywheel_serving_deployment_refusals_total", {"model": MODEL, "reason": reason}
    )
    return value or 0.0


async def test_deployments_change_what_answers(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    register_model(registry, contract, models["onnx1"], dataset_version="d1")
    register_model(registry, contract, models["onnx2"], dataset_version="d2", alias=None)
    prom = CollectorRegistry()
    repo, metrics = _repository(contract, registry, prom)
    await repo.load_from_registry()

    def answer(request_id: str = "r", version: str = "") -> tuple[int, str, int | None]:
        served, role, shadow = repo.route(MODEL, version, request_id)
        return served.model.version, role, shadow.model.version if shadow else None

    assert answer() == (1, "champion", None)
    assert await repo.apply(decide(registry, contract, "shadow", 2))
    assert answer() == (1, "champion", 2)
    assert answer(version="2") == (2, "pinned", None)
    canary = decide(registry, contract, "canary", 2, canary_percent=100)
    assert await repo.apply(canary)
    assert answer() == (2, "canary", None)
    assert not await repo.apply(canary)  # a repeat: already serving that decision
    assert await repo.apply(decide(registry, contract, "promote", 2))
    assert answer() == (2, "champion", None)
    assert await repo.apply(decide(registry, contract, "rollback", 1))
    assert answer() == (1, "champion", None)
    assert not await repo.apply(_forged("retire", 2))  # nothing recorded: refused
    assert not await repo.apply(_forged("promote", 9))  # unknown version: kept as is
    assert answer() == (1, "champion", None)
    assert metrics.swaps.labels(MODEL)._value.get() == 2
    assert _refusals(prom, "unknown_version") == 1
    with pytest.raises(ServingError) as err:
        repo.route(MODEL, "2", "r")
    assert err.value.code == "NOT_FOUND"
    with pytest.raises(ServingError) as err:
        repo.route("other", "", "r")
    assert err.value.code == "NOT_FOUND"


async def test_forged_deployments_are_refused_counted_and_change_nothing(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    register_model(registry, contract, models["onnx1"], dataset_version="d1")
    good = register_model(registry, contract, models["onnx2"], dataset_version="d2", alias=None)
    bad_parity = _register_variant(registry, good, parity=False)
    refused = _register_variant(
        registry, good, gates={"fairness_gap": Gate(passed=False, detail="gap 0.4")}
    )
    prom = CollectorRegistry()
    repo, _ = _repository(contract, registry, prom)
    await repo.load_from_registry()
    sha = good.onnx_sha256
    cases = {
        "signature": _forged("promote", good.version, key=None, manifest_sha256=sha),
        "canary_share": _forged(
            "canary",
            good.version,
            champion_version=1,
            challenger_version=2,
            challenger_mode="canary",
            canary_percent=250,
            manifest_sha256=sha,
        ),
        "parity": _forged("promote", bad_parity.version, manifest_sha256=sha),
        "gates": _forged("promote", refused.version, manifest_sha256=sha),
        "digest": _forged("promote", good.version, manifest_sha256="0" * 64),
        "not_recorded": _forged("promote", good.version, manifest_sha256=sha),
    }
    # A genuine decision whose signed body was altered fails its signature too.
    genuine = decide(registry, contract, "canary", good.version, canary_percent=10)
    altered = genuine.model_copy(update={"canary_percent": 100.0})
    for reason, event in cases.items():
        assert not await repo.apply(event), reason
        assert _refusals(prom, reason) == 1, reason
        assert repo.route(MODEL, "", "r")[0].model.version == 1
        assert repo.slots[MODEL].challenger is None
    assert not await repo.apply(altered)
    assert _refusals(prom, "signature") == 2
    # A decision claiming another registry state than its history entries give.
    lying = sign(genuine.model_copy(update={"canary_percent": 100.0, "signature": ""}), DEPLOY_KEY)
    assert not await repo.apply(lying)
    assert _refusals(prom, "mismatch") == 1
    assert repo.slots[MODEL].challenger is None
    assert await repo.apply(genuine)  # the real decision still applies
    assert repo.slots[MODEL].canary_percent == 10


def _register_variant(registry: Registry, base: Any, **changes: Any) -> Any:
    """Register ``base``'s ONNX again as a new version with ``changes`` to its manifest."""
    parity = base.parity.model_copy(update={"passed": changes.pop("parity", True)})
    manifest = base.model_copy(
        update={"version": registry.next_version(base.model), "parity": parity} | changes
    )
    return registry.register(manifest)


async def test_a_model_whose_bytes_do_not_match_its_manifest_is_refused(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    manifest = register_model(registry, contract, models["onnx1"], dataset_version="d1")
    assert _tamper(Path(registry.store.root), models["onnx2"]) == 1
    repo, metrics = _repository(contract, registry)
    await repo.load_from_registry()
    assert repo.slots[MODEL].champion is None
    assert metrics.load_failures.labels(MODEL, "tampered")._value.get() == 1
    with pytest.raises(ServingError) as err:
        repo.route(MODEL, "", "r")
    assert err.value.code == "UNAVAILABLE"
    assert manifest.version == 1


async def test_an_edited_manifest_is_refused(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    v1 = register_model(registry, contract, models["onnx1"], dataset_version="d1")
    v2 = register_model(registry, contract, models["onnx2"], dataset_version="d2", alias=None)
    # v2's manifest edited to run v1's (genuine, registered) ONNX: every sha256 still matches
    path = Path(registry.store.root) / "models" / MODEL / "versions" / "000002.json"
    path.chmod(0o644)
    path.write_text(
        path.read_text().replace(v2.onnx_sha256, v1.onnx_sha256).replace(v2.onnx_uri, v1.onnx_uri)
    )
    repo, metrics = _repository(contract, registry)
    await repo.load_from_registry()
    event = decide(registry, contract, "promote", 2)
    assert not await repo.apply(event)
    assert metrics.load_failures.labels(MODEL, "tampered")._value.get() == 1
    assert repo.route(MODEL, "", "r")[0].model.version == 1


def _tamper(root: Path, data: bytes) -> int:
    """Overwrite every stored ONNX file (after registration); how many there were."""
    files = list(root.rglob("*.onnx"))
    for file in files:
        file.chmod(0o644)
        file.write_bytes(data)
    return len(files)


async def test_the_registry_challenger_starts_in_its_recorded_mode(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    register_model(registry, contract, models["onnx1"], dataset_version="d1")
    register_model(
        registry,
        contract,
        models["onnx2"],
        dataset_version="d2",
        alias="challenger",
        detail={"mode": "canary", "canary_percent": 100},
    )
    repo, _ = _repository(contract, registry)
    await repo.load_from_registry()
    served, role, _ = repo.route(MODEL, "", "any")
    assert (served.model.version, role) == (2, "canary")


# --- prediction events -------------------------------------------------------------------


async def test_events_wait_for_room_and_drop_only_past_the_bound(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    manifest = register_model(registry, contract, models["onnx1"], dataset_version="d1")
    spec = InputSpec(contract, 64)
    model = LoadedModel(manifest, models["onnx1"], spec, 1)
    shadow = LoadedModel(manifest, models["onnx2"], spec, 1)
    gate = asyncio.Event()
    sent: list[Message] = []
    dropped: dict[str, int] = {}
    waits: list[float] = []
    failures = [1]

    async def send(messages: list[Message]) -> None:
        await gate.wait()  # Kafka "down" until the gate opens
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("broker restarting")  # retried, never dropped
        sent.extend(messages)

    publisher = PredictionPublisher(
        send,
        buffer_rows=10,
        batch_rows=100,
        block_s=0.2,
        dropped=lambda m, n: dropped.__setitem__(m, dropped.get(m, 0) + n),
        published=lambda m, n: None,
        waited=lambda m, s: waits.append(s),
        log=LOG,
        retry_s=0.01,
    )
    await publisher.start()
    feeds, n = spec.feeds([matrix_tensor(contract, models["rows"][:4])])
    outputs = model.predict(feeds)

    def answered(tag: str) -> Answered:
        return Answered(model, "champion", tag, f"k{tag}", feeds, outputs, n, shadow, 1.5, 0.0)

    # Rows count against the bound until Kafka acknowledged them: a and b fit in ten rows;
    # c waits for room, and with Kafka down past the bound its rows are dropped, counted.
    for tag in "ab":
        await publisher.submit(answered(tag))
    await publisher.submit(answered("c"))
    assert dropped == {MODEL: 4}
    assert len(waits) == 1
    assert waits[0] >= 0.2
    # d waits while Kafka comes back (one failed send, retried): nothing is lost.
    waiting = asyncio.create_task(publisher.submit(answered("d")))
    gate.set()
    await waiting
    await publisher.stop()
    assert dropped == {MODEL: 4}
    assert len(waits) == 2
    events = [PredictionGroup.model_validate_json(m.value) for m in sent]
    assert [r for e in events for r in e.requests.request_id] == ["a", "b", "d"]
    # Keyed by the first request's key; a and b answered alike went out as one message.
    assert [m.key for m in sent] == [b"ka", b"kd"]
    assert [m.traces for m in sent] == [("a", "b"), ("d",)]
    first = events[0]
    assert (first.schema_version, first.requests.rows, first.id) == (3, [n, n], "ka")
    assert (first.model_version, first.data_version, first.role) == (1, "d1", "champion")
    rows = first.predictions()
    assert [r.id for r in rows] == [f"ka-{i}" for i in range(n)] + [f"kb-{i}" for i in range(n)]
    assert rows[0].shadow is not None
    assert rows[0].shadow["outputs"]["label"] in (0, 1)
    assert set(rows[0].inputs) == set(contract.feature_names)
    assert rows[1].outputs["label"] == outputs["label"].tolist()[1]
    assert rows[n + 1].outputs["label"] == outputs["label"].tolist()[1]


def test_a_round_is_one_message_per_partition_and_model_and_every_row_decodes(
    contract: Contract, models: dict[str, Any], registry: Registry, monkeypatch: Any
) -> None:
    v1 = register_model(registry, contract, models["onnx1"], dataset_version="d1")
    v2 = register_model(registry, contract, models["onnx2"], dataset_version="d2")
    spec = InputSpec(contract, 64)
    champion, canary = (
        LoadedModel(v1, models["onnx1"], spec, 1),
        LoadedModel(v2, models["onnx2"], spec, 1),
    )
    rows = models["rows"]
    items = []
    for i in range(80):
        n = 1 + i % 5
        model, role = (canary, "canary") if i % 4 == 3 else (champion, "champion")
        feeds, n = spec.feeds([matrix_tensor(contract, rows[i % 15 : i % 15 + n])])
        items.append(
            Answered(
                model, role, f"r{i}", f"k{i}", feeds, model.predict(feeds), n, None, 1.0, 1e9 + i
            )
        )

    def partition_of(key: bytes) -> int:
        return int(key[1:]) % 3

    groups = group(items, partition_of)
    # Nothing lost or repeated; a request's group shares its partition, model and role;
    # within a group the answering order is kept; no group is over the caps.
    assert sorted(i.key for _, g in groups for i in g) == sorted(i.key for i in items)
    for partition, members in groups:
        assert {partition_of(i.key.encode()) for i in members} == {partition}
        assert len({(id(i.model), i.role) for i in members}) == 1
        assert [items.index(i) for i in members] == sorted(items.index(i) for i in members)
        assert len(members) <= encoding.GROUP_REQUESTS
        assert sum(i.rows for i in members) <= encoding.GROUP_ROWS
    assert len(groups) == 6  # 3 partitions x 2 models, each under the caps
    monkeypatch.setattr(encoding, "GROUP_REQUESTS", 4)
    assert max(len(g) for _, g in group(items, partition_of)) == 4

    # Every row decodes as the request it came from, under its own prediction id.
    decoded = {p.id: p for _, members in groups for p in decode_predictions(encode(members, 2e9))}
    assert len(decoded) == sum(i.rows for i in items)
    for item in items:
        for r in range(item.rows):
            got = decoded[f"{item.key}-{r}"]
            assert routing_key(got.id) == item.key
            assert (got.model_version, got.role, got.request_id) == (
                item.model.version,
                item.role,
                item.request_id,
            )
            assert got.created.timestamp() == item.created
            assert got.outputs["label"] == item.outputs["label"][r].item()
            assert got.inputs["AGEP"] == pytest.approx(float(item.feeds["AGEP"][r, 0]))


class Collected:
    """A :class:`PredictionPublisher` whose sends, drops and publications are recorded.

    Args:
        partition_of: the key -> partition map (None: one partition).
        settings: the publisher's other settings (buffer and round rows default to 1000).
    """

    def __init__(self, partition_of: Any = None, **settings: Any) -> None:
        self.sent: list[Message] = []
        self.dropped: dict[str, int] = {}
        self.published: dict[str, int] = {}
        self.signal = asyncio.Event()

        async def send(messages: list[Message]) -> None:
            self.sent.extend(messages)
            self.signal.set()

        async def partitions() -> Any:
            return partition_of

        self.publisher = PredictionPublisher(
            send,
            partitions=partitions if partition_of is not None else None,
            buffer_rows=settings.pop("buffer_rows", 1000),
            batch_rows=settings.pop("batch_rows", 1000),
            dropped=lambda m, k: self.dropped.__setitem__(m, self.dropped.get(m, 0) + k),
            published=lambda m, k: self.published.__setitem__(m, self.published.get(m, 0) + k),
            log=LOG,
            **settings,
        )

    async def drain(self, *items: Answered) -> None:
        """Submit ``items``, then publish them all and stop."""
        for item in items:
            await self.publisher.submit(item)
        await self.publisher.start()
        await self.publisher.stop()


def version_one(contract: Contract, models: dict[str, Any], registry: Registry) -> LoadedModel:
    """Version 1 (``onnx1``) registered and loaded, at most 64 rows a request."""
    manifest = register_model(registry, contract, models["onnx1"], dataset_version="d1")
    return LoadedModel(manifest, models["onnx1"], InputSpec(contract, 64), 1)


async def test_a_group_larger_than_kafka_takes_is_split(
    contract: Contract, models: dict[str, Any], registry: Registry, monkeypatch: Any
) -> None:
    model = version_one(contract, models, registry)
    feeds, n = model.spec.feeds([matrix_tensor(contract, models["rows"][:8])])
    outputs = model.predict(feeds)
    one = len(encode([Answered(model, "champion", "r", "k0", feeds, outputs, n, None, 1, 0)], 0))
    monkeypatch.setattr(events, "MAX_MESSAGE_BYTES", 3 * one)
    collected = Collected()
    await collected.drain(
        *(
            Answered(model, "champion", f"r{i}", f"k{i}", feeds, outputs, n, None, 1.0, 0.0)
            for i in range(10)
        )
    )
    sent = collected.sent
    assert all(len(m.value) <= 3 * one for m in sent)
    assert len(sent) >= 4
    ids = [p.id for m in sent for p in decode_predictions(m.value)]
    assert ids == [f"k{i}-{r}" for i in range(10) for r in range(n)]


async def test_a_request_larger_than_kafka_takes_travels_in_parts(
    contract: Contract, models: dict[str, Any], registry: Registry, monkeypatch: Any
) -> None:
    # One request whose event is over a record's limit goes out as row parts, each under
    # it, on the request key's partition; the ids continue across parts and decode to the
    # request's rows. A row alone over the limit is dropped and counted, never retried.
    model = version_one(contract, models, registry)
    feeds, n = model.spec.feeds([matrix_tensor(contract, models["rows"][:15])])
    outputs = model.predict(feeds)
    big = Answered(model, "champion", "r", "kbig", feeds, outputs, n, model, 1.0, 0.0)
    one_row = len(encode([big.rows_slice(0, 1)], 0.0))
    limit = len(encode([big], 0.0)) // 3
    assert limit > one_row
    monkeypatch.setattr(events, "MAX_MESSAGE_BYTES", limit)
    collected = Collected(partition_of=lambda key: len(key) % 3)
    await collected.drain(big)
    sent = collected.sent
    assert len(sent) >= 3
    assert all(len(m.value) <= limit for m in sent)
    assert {(m.key, m.partition, m.traces) for m in sent} == {(b"kbig", 1, ("r",))}
    decoded = [p for m in sent for p in decode_predictions(m.value)]
    assert [p.id for p in decoded] == [f"kbig-{i}" for i in range(n)]
    assert [p.outputs["label"] for p in decoded] == outputs["label"].tolist()
    assert [p.shadow["outputs"]["label"] for p in decoded if p.shadow] == outputs["label"].tolist()
    assert (collected.published, collected.dropped) == ({MODEL: n}, {})

    # Under a limit no single row fits: every row dropped and counted, nothing sent.
    monkeypatch.setattr(events, "MAX_MESSAGE_BYTES", one_row // 2)
    refused = Collected()
    await refused.drain(big)
    assert (refused.sent, refused.dropped, refused.publisher.pending_rows) == ([], {MODEL: n}, 0)


def test_a_split_requests_rows_keep_their_ids_in_the_schema() -> None:
    group = {
        "schema_version": 3,
        "id": "k",
        "model": "m",
        "model_version": 1,
        "data_version": "d",
        "role": "champion",
        "requests": {
            "id": ["k", "j"],
            "request_id": ["r", "s"],
            "created": [0.0, 0.0],
            "latency_ms": [1.0, 1.0],
            "rows": [2, 1],
            "first_row": [5, 0],
        },
        "inputs": {"x": [1.0, 2.0, 3.0]},
        "outputs": {"prediction": [1.0, 2.0, 3.0]},
    }
    event = PredictionGroup.model_validate(group)
    assert event.prediction_ids() == ["k-5", "k-6", "j-0"]
    assert [p.id for p in event.predictions()] == ["k-5", "k-6", "j-0"]
    with pytest.raises(ValidationError, match="every request column"):
        PredictionGroup.model_validate(
            {**group, "requests": {**group["requests"], "first_row": [1]}}
        )
    with pytest.raises(ValidationError, match="index 0 or later"):
        PredictionGroup.model_validate(
            {**group, "requests": {**group["requests"], "first_row": [-1, 0]}}
        )


async def test_a_round_starts_once_batch_rows_wait_not_only_after_the_linger(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    # Under load rounds come as the rows do, not as a burst every linger: a full round's
    # rows start it at once (here the linger is an hour).
    model = version_one(contract, models, registry)
    feeds, n = model.spec.feeds([matrix_tensor(contract, models["rows"][:2])])
    outputs = model.predict(feeds)
    collected = Collected(batch_rows=4 * n, linger_s=3600.0)
    publisher = collected.publisher
    await publisher.start()
    for i in range(3):
        await publisher.submit(
            Answered(model, "champion", f"r{i}", f"k{i}", feeds, outputs, n, None, 1.0, 0.0)
        )
    await asyncio.sleep(0)  # the publisher runs: three requests are under a round's rows
    assert collected.sent == []
    await publisher.submit(
        Answered(model, "champion", "r3", "k3", feeds, outputs, n, None, 1.0, 0.0)
    )
    await asyncio.wait_for(collected.signal.wait(), 10)
    assert [m.traces for m in collected.sent] == [("r0", "r1", "r2", "r3")]
    await publisher.stop()


async def test_a_long_publishing_round_still_lets_responses_out(
    contract: Contract, models: dict[str, Any], registry: Registry
) -> None:
    # Encoding is on the event loop: the publisher yields at least every YIELD_S, so a
    # response never waits for a whole round of (here slow, shadowed) encodings.
    model = version_one(contract, models, registry)
    feeds, n = model.spec.feeds([matrix_tensor(contract, models["rows"][:4])])
    outputs = model.predict(feeds)
    # every request on a partition of its own
    collected = Collected(partition_of=lambda key: int(key[1:]))
    sent, publisher = collected.sent, collected.publisher
    for i in range(40):  # the shadow model runs in each encoding: each takes a while
        answered = Answered(model, "champion", f"r{i}", f"k{i}", feeds, outputs, n, model, 1.0, 0.0)
        await publisher.submit(answered)
    ran_while_encoding: list[int] = []

    async def response() -> None:
        while len(sent) < 40:
            ran_while_encoding.append(len(sent))
            await asyncio.sleep(0)

    await publisher.start()
    await asyncio.gather(response(), publisher.stop())
    assert len(sent) == 40
    started = time.perf_counter()
    for _ in range(5):
        encode([Answered(model, "champion", "x", "kx", feeds, outputs, n, model, 1.0, 0.0)], 0.0)
    per_event = (time.perf_counter() - started) / 5
    # The round took 40 encodings; the other task got in about every YIELD_S of them.
    assert len(ran_while_encoding) >= min(40, int(40 * per_event / YIELD_S)) // 2
    assert len(ran_while_encoding) > 1
