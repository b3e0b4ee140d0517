"""OIP v2 REST beside gRPC, on a real serving process: tritonclient.http (sync and aio),
plain httpx JSON, the binary tensor data extension, and the same errors on both protocols."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
from tritonclient.utils import InferenceServerException

from services.serving.testing import feature_matrix
from tests.integration.test_serving import BAD_CASES, MODEL, Census, census, register

pytestmark = pytest.mark.integration
__all__ = ["census"]  # the module-scoped fixture, shared with test_serving

GRPC_TO_HTTP = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400}


def _http_inputs(grpc_inputs: list[triton_grpc.InferInput], binary: bool) -> list[Any]:
    """The same tensors as tritonclient.http inputs."""
    out = []
    for g in grpc_inputs:
        tensor = g._get_tensor()
        inp = triton_http.InferInput(tensor.name, list(tensor.shape), tensor.datatype)
        raw = g._get_content()
        dtype = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32}[tensor.datatype]
        inp.set_data_from_numpy(
            np.frombuffer(raw, dtype=dtype).reshape(tensor.shape), binary_data=binary
        )
        out.append(inp)
    return out


def test_rest_endpoints_answer_like_grpc_and_the_pipeline(
    start_service: Any, store_uri: str, census: Census
) -> None:
    register(store_uri, census, 1)
    proc = start_service("serving", FLYWHEEL_SERVING_MAX_BATCH_SIZE="8")
    http_address = proc.ready_info["http_address"]
    grpc_client = triton_grpc.InferenceServerClient(proc.ready_info["grpc_address"])
    client = triton_http.InferenceServerClient(http_address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "9")
    meta = client.get_server_metadata()
    assert meta["extensions"] == list(grpc_client.get_server_metadata().extensions)
    model = client.get_model_metadata(MODEL)
    grpc_model = grpc_client.get_model_metadata(MODEL, as_json=True)
    assert model["versions"] == ["1"]
    assert [i["name"] for i in model["inputs"]] == [i["name"] for i in grpc_model["inputs"]]
    assert client.get_model_metadata(MODEL, "1")["versions"] == ["1"]

    rows = census.holdout[:8]
    expected = census.proba(census.v1, rows)
    x = feature_matrix(census.contract, rows).astype(np.float32)
    for binary in (True, False):
        inp = triton_http.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outputs = [
            triton_http.InferRequestedOutput(name, binary_data=binary)
            for name in ("probabilities", "label", "prediction_id")
        ]
        result = client.infer(MODEL, [inp], request_id=f"rest-{binary}", outputs=outputs)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
        assert result.get_response()["id"] == f"rest-{binary}"
        assert result.get_response()["parameters"]["model_version"] == "1"
        assert len(set(result.as_numpy("prediction_id"))) == len(rows)
    # No outputs named: tritonclient asks for every output as binary (binary_data_output).
    inp = triton_http.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    by_version = client.infer(MODEL, [inp], model_version="1")
    np.testing.assert_allclose(by_version.as_numpy("probabilities"), expected, atol=1e-5)
    labels = by_version.as_numpy("label")
    # Compressed request bodies (tritonclient's request_compression_algorithm).
    for algorithm in ("gzip", "deflate"):
        packed = client.infer(MODEL, [inp], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(packed.as_numpy("probabilities"), expected, atol=1e-5)

    # Plain JSON, nested row-major data, as curl would send it.
    body = {
        "id": "plain-json",
        "parameters": {"unknown_parameter": 1},
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
        ],
    }
    reply = httpx.post(f"http://{http_address}/v2/models/{MODEL}/infer", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["id"] == "plain-json"
    assert doc["model_version"] == "1"
    outs = {o["name"]: o for o in doc["outputs"]}
    np.testing.assert_allclose(
        np.array(outs["probabilities"]["data"]).reshape(outs["probabilities"]["shape"]),
        expected,
        atol=1e-5,
    )
    np.testing.assert_array_equal(np.array(outs["label"]["data"]), labels)
    assert httpx.get(f"http://{http_address}/v2/health/ready").status_code == 200
    assert httpx.get(f"http://{http_address}/v2").json()["name"] == "flywheel"

    # aio client
    async def aio() -> np.ndarray:
        aclient = triton_http_aio.InferenceServerClient(http_address)
        try:
            assert await aclient.is_server_ready()
            inp = triton_http_aio.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return (await aclient.infer(MODEL, [inp])).as_numpy("probabilities")
        finally:
            await aclient.close()

    np.testing.assert_allclose(asyncio.run(aio()), expected, atol=1e-5)

    # Bad inputs: the same message on both protocols, NOT_FOUND as 404, INVALID as 400.
    for label, name, inputs, code, needle in BAD_CASES:
        with pytest.raises(InferenceServerException) as grpc_err:
            grpc_client.infer(name, inputs(census))
        for binary in (True, False):
            with pytest.raises(InferenceServerException) as http_err:
                client.infer(name, _http_inputs(inputs(census), binary))
            assert http_err.value.status() == str(GRPC_TO_HTTP[code]), label
            assert http_err.value.message() == grpc_err.value.message(), label
            assert needle in http_err.value.message(), label
    bad = [
        (b"{not json", "not valid JSON"),
        (b'{"inputs": []}', "non-empty 'inputs'"),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 16], "datatype": "BF16", "data": [0]}]}',
            "BF16 is not supported",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",'
            b' "data": ["a", 1]}]}',
            "not FP32",
        ),
    ]
    for payload, needle in bad:
        reply = httpx.post(f"http://{http_address}/v2/models/{MODEL}/infer", content=payload)
        assert reply.status_code == 400, payload
        assert needle in reply.json()["error"], (payload, reply.text)
    missing = httpx.get(f"http://{http_address}/v2/models/nope")
    assert missing.status_code == 404
    assert "'nope'" in missing.json()["error"]
    # Still serving after every rejection.
    assert client.infer(MODEL, [inp]).as_numpy("label").shape == (8,)
