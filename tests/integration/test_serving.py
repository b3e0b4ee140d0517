"""The serving service as a real process, called through tritonclient (sync and aio).

Each test registers tiny real models (the contract pipeline, fitted on census rows) in a
fresh store, starts ``python -m services.serving`` against a fresh broker and checks
what a client and the ``predictions`` topic see.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from tritonclient.utils import InferenceServerException

from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared import topics
from shared.contract import Contract, load_contract
from shared.events import Deployment, Prediction, decode_predictions, routing_key
from shared.features import to_frame
from shared.kafka import client_kwargs, consumer_kwargs
from shared.kafka_protocol import fetch_partitions
from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc
from shared.registry import Registry
from shared.settings import KafkaSettings
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, need_data
from tests.deploying import decide

pytestmark = pytest.mark.integration

MODEL = "census_employment"


class Census:
    """The contract, two fitted model versions and holdout rows."""

    def __init__(self) -> None:
        need_data("employment_MA_reference.pq")
        self.contract: Contract = load_contract(CONTRACTS / f"{MODEL}.yaml")
        self.v1, self.onnx1 = fit_model(self.contract, census_rows(DATA, 400))
        self.v2, self.onnx2 = fit_model(self.contract, census_rows(DATA, 400, offset=400), c=0.05)
        self.holdout = census_rows(DATA, 64, offset=5000)

    def proba(self, pipeline: Any, rows: pd.DataFrame) -> np.ndarray:
        frame = to_frame(
            self.contract, {f: rows[f].to_numpy() for f in self.contract.feature_names}
        )
        return np.asarray(pipeline.predict_proba(frame))


@pytest.fixture(scope="module")
def census() -> Census:
    return Census()


def register(store_uri: str, census: Census, *versions: int, **kw: Any) -> Registry:
    registry = Registry(ArtifactStore(store_uri))
    for v in versions:
        onnx = census.onnx1 if v == 1 else census.onnx2
        register_model(registry, census.contract, onnx, dataset_version=f"dv{v}", **kw)
    return registry


def matrix_input(census: Census, rows: pd.DataFrame) -> list[triton.InferInput]:
    x = feature_matrix(census.contract, rows).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return [inp]


async def read_predictions(
    settings: KafkaSettings, count: int, wait_s: float = 30
) -> list[dict[str, Any]]:
    """The first ``count`` served rows on ``predictions`` (every partition, from the start),
    each message unpacked into its rows (``Prediction`` JSON)."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, "test-predictions", None))
    await consumer.start()
    try:
        # an explicit metadata request: the consumer's own metadata has no topic yet on Kafka
        parts = (await fetch_partitions(settings, [topics.PREDICTIONS], wait_s))[topics.PREDICTIONS]
        consumer.assign([TopicPartition(topics.PREDICTIONS, p) for p in parts])
        parts = sorted(parts)
        partitioner = DefaultPartitioner()
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait_s
        while len(out) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    rows = decode_predictions(r.value)
                    # Every row's routing key (what feedback is re-keyed by) maps to the
                    # partition its message is on: labels meet their predictions.
                    assert {
                        partitioner(routing_key(p.id).encode(), parts, parts) for p in rows
                    } == {r.partition}
                    out.extend(p.model_dump(mode="json") for p in rows)
        return out
    finally:
        await consumer.stop()


async def publish_deployment(settings: KafkaSettings, event: Deployment | bytes) -> None:
    producer = AIOKafkaProducer(**client_kwargs(settings, "test-deployments"))
    await producer.start()
    try:
        value = event if isinstance(event, bytes) else event.model_dump_json().encode()
        await producer.send_and_wait(topics.MODELS_DEPLOYMENTS, value, key=MODEL.encode())
    finally:
        await producer.stop()


def test_infer_matches_the_registered_model_and_publishes_events(
    start_service: Any, store_uri: str, kafka_settings: KafkaSettings, census: Census
) -> None:
    register(store_uri, census, 1)
    proc = start_service("serving")
    assert proc.ready_info["event_loop"] == "uvloop"  # serving's default loop
    assert proc.ready_info["grpc_server"] == "native"  # the default: auto, no TLS
    client = triton.InferenceServerClient(proc.ready_info["grpc_address"])
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta.versions == ["1"]
    # One style is listed as the inputs (a generic client can build from them alone); the
    # matrix style is described in the parameters.
    assert [i.name for i in meta.inputs] == census.contract.feature_names
    config = client.get_model_config(MODEL, as_json=True)["config"]
    matrix = json.loads(config["parameters"]["matrix_input"]["string_value"])
    assert (matrix["name"], matrix["shape"]) == ("input", [-1, len(meta.inputs)])
    assert matrix["columns"] == census.contract.feature_names

    rows = census.holdout
    result = client.infer(MODEL, matrix_input(census, rows))
    expected = census.proba(census.v1, rows)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    np.testing.assert_array_equal(
        result.as_numpy("label"),
        census.v1.predict(
            to_frame(
                census.contract, {f: rows[f].to_numpy() for f in census.contract.feature_names}
            )
        ),
    )
    response = result.get_response()
    assert response.model_version == "1"
    assert response.parameters["data_version"].string_param == "dv1"
    assert response.parameters["model_version"].string_param == "1"
    ids = [i.decode() for i in result.as_numpy("prediction_id")]
    assert len(set(ids)) == len(rows)

    # A generic client builds its request from ModelMetadata's inputs alone (names,
    # datatypes, shapes with -1 as the batch) and gets the same answer.
    frame = to_frame(
        census.contract, {n: rows[n].to_numpy() for n in census.contract.feature_names}
    )
    inputs = []
    for spec in meta.inputs:
        shape = [len(rows) if d == -1 else d for d in spec.shape]
        numpy_type = np.float32 if spec.datatype == "FP32" else np.object_
        inp = triton.InferInput(spec.name, shape, spec.datatype)
        inp.set_data_from_numpy(frame[spec.name].to_numpy().astype(numpy_type).reshape(shape))
        inputs.append(inp)
    columnar = client.infer(MODEL, inputs, request_id="columnar-1")
    np.testing.assert_allclose(columnar.as_numpy("probabilities"), expected, atol=1e-5)
    assert columnar.get_response().id == "columnar-1"

    events = asyncio.run(read_predictions(kafka_settings, 2 * len(rows)))
    assert len(events) == 2 * len(rows)
    by_id = {e["id"]: Prediction.model_validate(e) for e in events}
    for i, pid in enumerate(ids):
        event = by_id[pid]
        assert (event.model, event.model_version, event.data_version) == (MODEL, 1, "dv1")
        assert event.outputs["label"] == int(result.as_numpy("label")[i])
        np.testing.assert_allclose(event.outputs["probabilities"], expected[i], atol=1e-5)
        assert event.inputs["SCHL"] == str(int(float(rows["SCHL"].iloc[i])))
        assert event.role == "champion"
        assert event.latency_ms > 0
    assert sum(e["request_id"] == "columnar-1" for e in events) == len(rows)


def test_a_request_over_a_records_limit_is_published_in_parts(
    start_service: Any, store_uri: str, kafka_settings: KafkaSettings, census: Census
) -> None:
    # 12,000 rows encode to about 1.1 MB of prediction event, over the 1 MiB a Kafka record
    # may take: serving sends it in parts under the request key, each under the limit,
    # and every row comes back from the broker under the id serving returned.
    register(store_uri, census, 1)
    proc = start_service("serving", FLYWHEEL_SERVING_MAX_BATCH_SIZE="12000")
    client = triton.InferenceServerClient(proc.ready_info["grpc_address"])
    rows = pd.concat([census.holdout] * (12_000 // len(census.holdout)), ignore_index=True)
    result = client.infer(MODEL, matrix_input(census, rows))
    ids = [i.decode() for i in result.as_numpy("prediction_id")]
    labels = result.as_numpy("label").tolist()
    events = asyncio.run(read_predictions(kafka_settings, len(rows)))
    assert [e["id"] for e in events if e["id"] in set(ids)] == ids
    assert [e["outputs"]["label"] for e in events] == labels
    sizes = asyncio.run(record_sizes(kafka_settings))
    assert sum(sizes) > 1024 * 1024
    assert len(sizes) >= 2
    assert max(sizes) <= 1024 * 1024


async def record_sizes(settings: KafkaSettings) -> list[int]:
    """Sizes of every ``predictions`` record value."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(settings, "test-predictions", None))
    await consumer.start()
    try:
        parts = (await fetch_partitions(settings, [topics.PREDICTIONS], 10))[topics.PREDICTIONS]
        consumer.assign([TopicPartition(topics.PREDICTIONS, p) for p in parts])
        ends = await consumer.end_offsets([TopicPartition(topics.PREDICTIONS, p) for p in parts])
        sizes: list[int] = []
        while sum(ends.values()) > sum([await consumer.position(tp) for tp in ends], 0):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                sizes.extend(len(r.value) for r in records)
        return sizes
    finally:
        await consumer.stop()


BAD_CASES = [
    ("unknown model", "nope", lambda c: matrix_input(c, c.holdout[:2]), "NOT_FOUND", "'nope'"),
    (
        "wrong tensor name",
        MODEL,
        lambda c: [_tensor("inputs", np.zeros((1, 16), np.float32))],
        "INVALID_ARGUMENT",
        "'inputs'",
    ),
    (
        "wrong datatype",
        MODEL,
        lambda c: [_tensor("input", np.zeros((1, 16), np.int32))],
        "INVALID_ARGUMENT",
        "datatype INT32",
    ),
    (
        "wrong shape",
        MODEL,
        lambda c: [_tensor("input", np.zeros((2, 15), np.float32))],
        "INVALID_ARGUMENT",
        "[2, 15]",
    ),
    (
        "NaN in a non-nullable feature",
        MODEL,
        lambda c: [
            _tensor("input", _with(feature_matrix(c.contract, c.holdout[:3]), 1, 0, np.nan))
        ],
        "INVALID_ARGUMENT",
        "'AGEP' row 1: NaN",
    ),
    (
        "category out of range",
        MODEL,
        lambda c: [_tensor("input", _with(feature_matrix(c.contract, c.holdout[:3]), 2, 1, 99.0))],
        "INVALID_ARGUMENT",
        "'SCHL' row 2",
    ),
    (
        "batch over the maximum",
        MODEL,
        lambda c: [_tensor("input", np.zeros((9, 16), np.float32))],
        "INVALID_ARGUMENT",
        "over the maximum of 8",
    ),
]


def _tensor(name: str, array: np.ndarray) -> triton.InferInput:
    dtype = {
        np.dtype(np.float32): "FP32",
        np.dtype(np.int32): "INT32",
        np.dtype(np.float64): "FP64",
    }
    inp = triton.InferInput(name, list(array.shape), dtype[array.dtype])
    inp.set_data_from_numpy(array)
    return inp


def _with(matrix: np.ndarray, row: int, col: int, value: float) -> np.ndarray:
    out = matrix.astype(np.float32)
    out[row, col] = value
    return out


def test_bad_inputs_get_their_code_and_a_message_naming_the_problem(
    start_service: Any, store_uri: str, census: Census
) -> None:
    register(store_uri, census, 1)
    proc = start_service("serving", FLYWHEEL_SERVING_MAX_BATCH_SIZE="8")
    client = triton.InferenceServerClient(proc.ready_info["grpc_address"])
    for label, model, inputs, code, needle in BAD_CASES:
        with pytest.raises(InferenceServerException) as err:
            client.infer(model, inputs(census))
        assert err.value.status() == f"StatusCode.{code}", label
        assert needle in err.value.message(), (label, err.value.message())
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, matrix_input(census, census.holdout[:1]), model_version="7")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    # Still serving after every rejection.
    assert client.infer(MODEL, matrix_input(census, census.holdout[:2])).as_numpy(
        "label"
    ).shape == (2,)


def test_promotion_under_load_fails_no_request_and_switches_version(
    start_service: Any, store_uri: str, kafka_settings: KafkaSettings, census: Census
) -> None:
    register(store_uri, census, 1)
    registry = register(store_uri, census, 2, alias=None)
    proc = start_service("serving")
    address = proc.ready_info["grpc_address"]
    inputs = matrix_input(census, census.holdout[:4])

    async def run() -> tuple[list[str], list[str]]:
        client = triton_aio.InferenceServerClient(address)
        versions: list[str] = []
        failures: list[str] = []
        switched = asyncio.Event()
        warmed = asyncio.Event()

        async def worker() -> None:
            after = 0
            while after < 200:
                try:
                    result = await client.infer(MODEL, inputs)
                    version = result.get_response().model_version
                    versions.append(version)
                    if len(versions) >= 300:
                        warmed.set()
                    if version == "2":
                        switched.set()
                except InferenceServerException as exc:
                    failures.append(str(exc))
                if switched.is_set():
                    after += 1

        workers = [asyncio.create_task(worker()) for _ in range(8)]
        await warmed.wait()
        await publish_deployment(kafka_settings, decide(registry, census.contract, "promote", 2))
        await asyncio.wait_for(asyncio.gather(*workers), 60)
        await client.close()
        return versions, failures

    versions, failures = asyncio.run(run())
    assert failures == []
    assert versions[0] == "1"
    assert versions[-1] == "2"
    first_v2 = versions.index("2")
    # After the swap, the old version only answers requests already in flight.
    assert versions[first_v2 + 16 :].count("1") == 0
    assert client_metric(proc, "flywheel_serving_swaps_total") == 1.0


def client_metric(proc: Any, prefix: str) -> float:
    """The sum of the samples whose line starts with ``prefix`` (a name, or name{labels...)."""
    import urllib.request

    port = proc.ready_info["metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and ("{" in prefix or line[len(prefix)] in "{ ")
    )


def test_canary_share_and_shadow_outputs(
    start_service: Any, store_uri: str, kafka_settings: KafkaSettings, census: Census
) -> None:
    register(store_uri, census, 1)
    registry = register(store_uri, census, 2, alias=None)
    proc = start_service("serving")
    client = triton.InferenceServerClient(proc.ready_info["grpc_address"])
    one = matrix_input(census, census.holdout[:1])

    asyncio.run(
        publish_deployment(kafka_settings, b'{"model": "census_employment", "action": "explode"}')
    )
    canary = decide(registry, census.contract, "canary", 2, canary_percent=30)
    asyncio.run(publish_deployment(kafka_settings, canary))
    _wait_for(lambda: client.get_model_metadata(MODEL).versions == ["1", "2"])
    n = 800
    answered = [
        client.infer(MODEL, one, request_id=uuid.uuid4().hex).get_response().model_version
        for _ in range(n)
    ]
    # The malformed record before it was counted and skipped, not fatal.
    invalid = 'flywheel_serving_deployments_total{action="_unknown",model="_unknown"'
    assert client_metric(proc, invalid) == 1.0
    share = answered.count("2") / n
    assert abs(share - 0.30) < 0.065, share  # > 4 sigma for n=800
    sticky = {
        client.infer(MODEL, one, request_id="same-id").get_response().model_version
        for _ in range(20)
    }
    assert len(sticky) == 1

    shadow = decide(registry, census.contract, "shadow", 2)
    asyncio.run(publish_deployment(kafka_settings, shadow))
    _wait_for(lambda: model_parameters(proc)["role.2"] == "shadow")
    rows = census.holdout[:10]
    result = client.infer(MODEL, matrix_input(census, rows), request_id="shadow-req")
    assert result.get_response().model_version == "1"
    ids = [i.decode() for i in result.as_numpy("prediction_id")]
    events = asyncio.run(read_predictions(kafka_settings, n + 20 + len(rows)))
    shadowed = {e["id"]: e for e in events if e["request_id"] == "shadow-req"}
    assert sorted(shadowed) == sorted(ids)
    expected_v2 = census.proba(census.v2, rows)
    for i, pid in enumerate(ids):
        event = Prediction.model_validate(shadowed[pid])
        assert event.model_version == 1
        assert event.shadow is not None
        assert event.shadow["model_version"] == 2
        np.testing.assert_allclose(
            event.shadow["outputs"]["probabilities"], expected_v2[i], atol=1e-5
        )
    canary_events = [e for e in events if e["role"] == "canary"]
    assert len(canary_events) == answered.count("2") + (20 if sticky == {"2"} else 0)
    assert all(e["model_version"] == 2 for e in canary_events)


def model_parameters(proc: Any) -> dict[str, str]:
    """ModelMetadata parameters (an extension tritonclient's own proto does not parse)."""
    with grpc.insecure_channel(proc.ready_info["grpc_address"]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
    return {k: v.string_param for k, v in meta.parameters.items()}


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_flywheel_predict_prints_predictions_with_versions(
    start_service: Any, store_uri: str, census: Census, tmp_path: Path
) -> None:
    import typer
    from typer.testing import CliRunner

    from shared.cli import predict

    register(store_uri, census, 1)
    proc = start_service("serving")
    rows = census.holdout[:5]
    file = tmp_path / "rows.jsonl"
    rows.to_json(file, orient="records", lines=True)
    app = typer.Typer()
    predict.register(app)
    app.command("noop", hidden=True)(lambda: None)  # keep typer in multi-command mode
    result = CliRunner().invoke(
        app,
        ["predict", MODEL, str(file), "--json", "--url", proc.ready_info["grpc_address"]],
        env={"FLYWHEEL_CONTRACTS": str(CONTRACTS)},
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [p["row"] for p in printed] == list(range(5))
    assert {(p["model_version"], p["data_version"]) for p in printed} == {("1", "dv1")}
    np.testing.assert_allclose(
        [p["probabilities"] for p in printed], census.proba(census.v1, rows), atol=1e-5
    )


def test_serving_keeps_answering_when_kafka_goes_away(
    start_service: Any, store_uri: str, census: Census, tmp_path: Path
) -> None:
    from shared.embedded import EmbeddedBroker, free_port

    register(store_uri, census, 1)
    broker = EmbeddedBroker(free_port(), log=tmp_path / "own-broker.log")
    broker.start()
    proc = start_service(
        "serving",
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        KAFKA_REQUEST_TIMEOUT_MS="2000",
        FLYWHEEL_SERVING_EVENT_BUFFER_ROWS="40",
        FLYWHEEL_SERVING_EVENT_BLOCK_MS="50",  # the bound a request waits for room
    )
    client = triton.InferenceServerClient(proc.ready_info["grpc_address"])
    inputs = matrix_input(census, census.holdout[:4])
    assert client.infer(MODEL, inputs).get_response().model_version == "1"
    broker.stop()
    for _ in range(100):  # 400 rows against a 40-row buffer, with Kafka gone
        assert client.infer(MODEL, inputs).as_numpy("label").shape == (4,)
    assert client_metric(proc, "flywheel_serving_prediction_events_dropped_total") >= 400 - 40 - 4
    code = proc.terminate()
    assert code == 0, "\n".join(list(proc.tail)[-15:])
