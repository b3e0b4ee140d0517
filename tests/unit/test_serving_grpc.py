"""The gRPC and REST adapters in-process, called through a real stub and httpx: fuzzing,
token auth, TLS, readiness."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.serving.dataplane import DataPlane
from services.serving.events import PredictionPublisher
from services.serving.grpc.codec import ResponseEncoder
from services.serving.grpc.server import MAX_MESSAGE_BYTES, GrpcServer, make_server
from services.serving.metrics import ServingMetrics
from services.serving.repository import ModelRepository
from services.serving.rest.server import RestServer
from services.serving.settings import ServingSettings
from services.serving.tensors import decode_bytes
from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from services.serving.types import InferResponse, OutputTensor
from shared.contract import Contract, load_contract
from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.conftest import CONTRACTS, DATA, need_data

MODEL = "census_employment"
LOG = structlog.get_logger()
TOKEN = "s3cret-token"


class ServerThread:
    """A serving data plane + gRPC server on its own event loop in a thread."""

    def __init__(self, store: str, contract: Contract, settings: ServingSettings):
        self.loop = asyncio.new_event_loop()
        self.metrics = ServingMetrics(CollectorRegistry())
        repo = ModelRepository(
            {MODEL: contract},
            Registry(ArtifactStore(store)),
            self.metrics,
            LOG,
            max_batch_size=settings.max_batch_size,
        )

        async def send(messages: list[Any]) -> None:
            self.published += len(messages)

        self.published = 0
        self.publisher = PredictionPublisher(
            send,
            buffer_rows=10_000,
            batch_rows=1000,
            dropped=lambda m, n: None,
            published=lambda m, n: None,
            log=LOG,
        )
        self.dataplane = DataPlane(repo, self.publisher, self.metrics)
        self.server = GrpcServer(self.dataplane, settings, LOG)
        self.rest = RestServer(self.dataplane, settings, LOG)
        self.ready_at_start = True
        self.repo = repo
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.call(self.publisher.start())
        self.call(self.repo.load_from_registry())
        self.call(self.server.start(ready=self.ready_at_start))
        self.call(self.rest.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.rest.stop())
        self.call(self.server.stop())
        self.call(self.publisher.stop())
        self.call(self.repo.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load_contract(CONTRACTS / f"{MODEL}.yaml")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, contract: Contract) -> str:
    need_data("employment_MA_reference.pq")
    uri = f"file://{tmp_path_factory.mktemp('store')}"
    _, onnx = fit_model(contract, census_rows(DATA, 300))
    register_model(Registry(ArtifactStore(uri)), contract, onnx, dataset_version="d1")
    return uri


def _settings(**kw: Any) -> ServingSettings:
    return ServingSettings(
        grpc_host="127.0.0.1",
        grpc_port=0,
        http_host="127.0.0.1",
        http_port=0,
        max_batch_size=32,
        **kw,
    )


def _valid_request(contract: Contract) -> pb.ModelInferRequest:
    x = feature_matrix(contract, census_rows(DATA, 2, offset=100)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


@pytest.fixture(scope="module", params=["grpcio", "native"])
def server(
    request: pytest.FixtureRequest, store: str, contract: Contract
) -> Iterator[ServerThread]:
    """The server on each gRPC implementation (``grpc_server``): every test using it runs
    on both."""
    with ServerThread(store, contract, _settings(grpc_server=request.param)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.server.port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_typed_contents_answer_with_typed_outputs(
    stub: pb_grpc.GRPCInferenceServiceStub, contract: Contract
) -> None:
    raw = _valid_request(contract)
    x = np.frombuffer(raw.raw_input_contents[0], np.float32)
    typed = pb.ModelInferRequest(model_name=MODEL, id="t1", outputs=[{"name": "probabilities"}])
    typed.inputs.add(name="input", datatype="FP32", shape=[2, 16]).contents.fp32_contents.extend(x)
    a, b = stub.ModelInfer(raw), stub.ModelInfer(typed)
    assert [o.name for o in b.outputs] == ["probabilities"]
    assert not b.raw_output_contents
    raw_probs = np.frombuffer(a.raw_output_contents[1], np.float32)
    np.testing.assert_allclose(list(b.outputs[0].contents.fp32_contents), raw_probs)
    assert b.id == "t1"
    assert b.parameters["data_version"].string_param == "d1"


_names = st.sampled_from(["input", "AGEP", "SCHL", "x", ""])
_dtypes = st.sampled_from(["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES", "FP16", "UINT8", "?"])
_tensor = st.fixed_dictionaries(
    {
        "name": _names,
        "datatype": _dtypes,
        "shape": st.lists(st.integers(-2, 40), max_size=3),
        "fp32": st.lists(st.floats(allow_nan=True, width=32), max_size=40),
        "bytes": st.lists(st.binary(max_size=4), max_size=5),
        "int64": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
    }
)


def _response(request_id: str, rows: int, raw: bool, label: int) -> InferResponse:
    ids = [f"k{label}-{i}".encode() for i in range(rows)]
    probabilities = np.full((rows, 2), 0.25 * label, dtype=np.float32)
    return InferResponse(
        MODEL,
        "1",
        request_id,
        {"model_version": "1", "data_version": "d1", "role": "champion"},
        [
            OutputTensor("label", "INT64", (rows,), np.full(rows, label, dtype=np.int64)),
            OutputTensor("probabilities", "FP32", (rows, 2), probabilities),
            OutputTensor("prediction_id", "BYTES", (rows,), ids),
        ],
        raw,
    )


def test_the_response_encoder_reuses_templates_without_carrying_anything_over() -> None:
    # The same model, role and batch size share one template: a response must still hold
    # only its own id and values, raw or typed, whatever was encoded before it.
    encoder = ResponseEncoder(cache_size=2)
    for request_id, rows, raw, label in [
        ("a", 1, True, 1),
        ("", 1, True, 0),
        ("c", 3, True, 1),
        ("d", 3, False, 0),
        ("", 3, False, 1),
        ("f", 1, True, 0),  # past the cache size: the cache starts again
    ]:
        out = encoder.encode(_response(request_id, rows, raw, label))
        assert out.id == request_id
        assert out.model_name == MODEL
        assert out.parameters["role"].string_param == "champion"
        assert [list(t.shape) for t in out.outputs] == [[rows], [rows, 2], [rows]]
        ids = [f"k{label}-{i}".encode() for i in range(rows)]
        if raw:
            assert len(out.raw_output_contents) == 3
            assert np.frombuffer(out.raw_output_contents[0], np.int64).tolist() == [label] * rows
            probabilities = np.frombuffer(out.raw_output_contents[1], np.float32)
            assert probabilities.tolist() == [0.25 * label] * (2 * rows)
            assert decode_bytes("ids", out.raw_output_contents[2], rows).tolist() == ids
            assert not out.outputs[0].HasField("contents")
        else:
            assert not out.raw_output_contents
            assert list(out.outputs[0].contents.int64_contents) == [label] * rows
            assert list(out.outputs[1].contents.fp32_contents) == [0.25 * label] * (2 * rows)
            assert list(out.outputs[2].contents.bytes_contents) == ids


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    model=st.sampled_from([MODEL, "nope", ""]),
    version=st.sampled_from(["", "1", "2", "x"]),
    tensors=st.lists(_tensor, max_size=4),
    raw=st.one_of(st.none(), st.lists(st.binary(max_size=80), max_size=4)),
    outputs=st.lists(st.sampled_from(["label", "probabilities", "prediction_id", "z"]), max_size=2),
)
def test_malformed_requests_never_crash_the_server(
    stub: pb_grpc.GRPCInferenceServiceStub,
    server: ServerThread,
    contract: Contract,
    model: str,
    version: str,
    tensors: list[dict[str, Any]],
    raw: list[bytes] | None,
    outputs: list[str],
) -> None:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for t in tensors:
        tensor = request.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        tensor.contents.fp32_contents.extend(t["fp32"])
        tensor.contents.bytes_contents.extend(t["bytes"])
        tensor.contents.int64_contents.extend(t["int64"])
    if raw is not None:
        request.raw_input_contents.extend(raw)
    for name in outputs:
        request.outputs.add(name=name)
    failure: grpc.RpcError | None = None
    try:
        stub.ModelInfer(request)
    except grpc.RpcError as err:
        failure = err
    if failure is not None:
        assert failure.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        ), failure.details()
        assert failure.details()
    assert stub.ModelInfer(_valid_request(contract)).model_version == "1"
    for label in (MODEL, "_unknown"):
        assert server.metrics.errors.labels(label, "INTERNAL")._value.get() == 0


def test_a_request_over_the_message_limit_is_refused_and_the_server_goes_on(
    stub: pb_grpc.GRPCInferenceServiceStub, contract: Contract
) -> None:
    # The gRPC server's own limit (MAX_MESSAGE_BYTES), on either implementation: the
    # client hears RESOURCE_EXHAUSTED and the next request is answered.
    request = _valid_request(contract)
    request.raw_input_contents[0] = bytes(MAX_MESSAGE_BYTES + 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ModelInfer(_valid_request(contract)).model_version == "1"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return folder


def test_token_auth_over_tls(store: str, contract: Contract, certs: Path) -> None:
    settings = _settings(
        auth_tokens=TOKEN,
        tls_cert_file=str(certs / "cert.pem"),
        tls_key_file=str(certs / "key.pem"),
    )
    with ServerThread(store, contract, settings) as running:
        creds = grpc.ssl_channel_credentials((certs / "cert.pem").read_bytes())
        with grpc.secure_channel(
            f"127.0.0.1:{running.server.port}",
            creds,
            options=[("grpc.ssl_target_name_override", "localhost")],
        ) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest()).live  # open without a token
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            request = _valid_request(contract)
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, metadata=[("authorization", "Bearer wrong")])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.ModelInfer(request, metadata=[("authorization", f"Bearer {TOKEN}")])
            assert ok.model_version == "1"
            assert running.metrics.auth_failures._value.get() == 2
            # Streaming: refused without a token, answered with one.
            with pytest.raises(grpc.RpcError) as err:
                list(stub.ModelStreamInfer(iter([request])))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            streamed = list(
                stub.ModelStreamInfer(
                    iter([request]), metadata=[("authorization", f"Bearer {TOKEN}")]
                )
            )
            assert streamed[0].infer_response.model_version == "1"
        # REST: the same TLS and the same tokens; health stays open.
        base = f"https://localhost:{running.rest.port}/v2"
        with httpx.Client(verify=ssl.create_default_context(cafile=certs / "cert.pem")) as web:
            assert web.get(f"{base}/health/ready").status_code == 200
            refused = web.get(f"{base}/models/{MODEL}")
            assert refused.status_code == 401
            assert "bearer token" in refused.json()["error"]
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert web.get(f"{base}/models/{MODEL}", headers=auth).json()["name"] == MODEL
            x = feature_matrix(contract, census_rows(DATA, 2, offset=100))
            body = {"inputs": [{"name": "input", "shape": [2, 16], "datatype": "FP64"}]}
            body["inputs"][0]["data"] = x.ravel().tolist()
            answer = web.post(f"{base}/models/{MODEL}/infer", json=body, headers=auth)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == "1"
        assert running.metrics.auth_failures._value.get() == 4
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{running.rest.port}/v2/health/live", timeout=5)
        # Plaintext clients cannot talk to the TLS port.
        with (
            grpc.insecure_channel(f"127.0.0.1:{running.server.port}") as plain,
            pytest.raises(grpc.RpcError),
        ):
            pb_grpc.GRPCInferenceServiceStub(plain).ServerLive(pb.ServerLiveRequest(), timeout=5)


def test_mutual_tls_requires_a_client_certificate(
    store: str, contract: Contract, certs: Path
) -> None:
    cert, key = (certs / "cert.pem").read_bytes(), (certs / "key.pem").read_bytes()
    settings = _settings(
        tls_cert_file=str(certs / "cert.pem"),
        tls_key_file=str(certs / "key.pem"),
        tls_client_ca_file=str(certs / "cert.pem"),  # self-signed: its own CA
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with ServerThread(store, contract, settings) as running:
        address = f"127.0.0.1:{running.server.port}"
        with_cert = grpc.ssl_channel_credentials(cert, private_key=key, certificate_chain=cert)
        with grpc.secure_channel(address, with_cert, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(_valid_request(contract)).model_version == "1"
        without = grpc.ssl_channel_credentials(cert)
        with (
            grpc.secure_channel(address, without, options=options) as channel,
            pytest.raises(grpc.RpcError),
        ):
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)


def test_readiness_follows_the_lifecycle_on_every_signal(store: str, contract: Contract) -> None:
    running = ServerThread(store, contract, _settings())
    running.ready_at_start = False
    with running, grpc.insecure_channel(f"127.0.0.1:{running.server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        rest = f"http://127.0.0.1:{running.rest.port}/v2"

        def signals() -> tuple[bool, int, int, bool, int]:
            return (
                stub.ServerReady(pb.ServerReadyRequest()).ready,
                health.Check(health_pb2.HealthCheckRequest()).status,
                httpx.get(f"{rest}/health/ready").status_code,
                stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready,
                httpx.get(f"{rest}/models/{MODEL}/ready").status_code,
            )

        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        serving = health_pb2.HealthCheckResponse.SERVING
        # Listening, models loaded, but readiness not turned on yet (start-up).
        assert signals() == (False, not_serving, 503, False, 503)
        assert httpx.get(f"{rest}/health/live").status_code == 200
        running.call(running.server.set_ready(True))
        assert signals() == (True, serving, 200, True, 200)
        # Draining: every signal false at once, requests still answered.
        running.call(running.server.set_ready(False))
        assert signals() == (False, not_serving, 503, False, 503)
        assert stub.ModelInfer(_valid_request(contract)).model_version == "1"


def test_the_native_server_keeps_auth_streaming_reflection_and_health(
    store: str, contract: Contract
) -> None:
    # Unary calls go through pygrpc-native's Rust front; ModelStreamInfer (bidirectional)
    # and reflection through the grpc.aio server behind it: tokens hold on both paths.
    settings = _settings(grpc_server="native", auth_tokens=TOKEN)
    with (
        ServerThread(store, contract, settings) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.server.port}") as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live  # open without a token
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        request = _valid_request(contract)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = [("authorization", f"Bearer {TOKEN}")]
        answer = stub.ModelInfer(request, metadata=auth)
        assert answer.model_version == "1"
        assert answer.parameters["data_version"].string_param == "d1"
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ModelStreamInfer(iter([request])))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        streamed = list(stub.ModelStreamInfer(iter([request, request]), metadata=auth))
        assert [s.infer_response.model_version for s in streamed] == ["1", "1"]
        assert running.metrics.auth_failures._value.get() == 2
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        listed = next(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        )
        names = {service.name for service in listed.list_services_response.service}
        assert "inference.GRPCInferenceService" in names
        # An unknown model is NOT_FOUND with its message, as on grpc.aio.
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(pb.ModelInferRequest(model_name="nope"), metadata=auth)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in (err.value.details() or "")


def test_the_native_server_refuses_tls_at_start_up(certs: Path) -> None:
    with pytest.raises(ValueError, match="has no TLS"):
        _settings(
            grpc_server="native",
            tls_cert_file=str(certs / "cert.pem"),
            tls_key_file=str(certs / "key.pem"),
        )


async def test_auto_runs_the_native_server_and_grpcio_where_tls_is_set(certs: Path) -> None:
    # In a running loop: grpc.aio's server takes the current one.
    import pygrpc_native.aio as native_aio

    tls = {"tls_cert_file": str(certs / "cert.pem"), "tls_key_file": str(certs / "key.pem")}
    plain = _settings()
    assert plain.grpc_server == "auto"
    assert plain.grpc_implementation == "native"
    assert isinstance(make_server(plain, [], []), native_aio.Server)
    secure = _settings(**tls)
    assert secure.grpc_implementation == "grpcio"
    assert not isinstance(make_server(secure, [], []), native_aio.Server)
    assert _settings(grpc_server="grpcio").grpc_implementation == "grpcio"
    assert _settings(grpc_server="native", grpc_native_io_threads=3).grpc_implementation == (
        "native"
    )


def test_auto_falls_back_to_grpcio_where_pygrpc_native_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.serving import settings as serving_settings

    monkeypatch.setattr(serving_settings, "native_installed", lambda: False)
    assert _settings().grpc_implementation == "grpcio"
    with pytest.raises(ValueError, match="needs pygrpc-native"):
        _settings(grpc_server="native")
