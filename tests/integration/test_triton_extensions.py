"""Triton's gRPC and REST extensions on a real serving process: streaming inference (sync
and aio), ModelConfig, ModelStatistics, RepositoryIndex, load/unload refused, all compared
with the registered pipeline and between the two protocols."""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from services.serving.testing import feature_matrix
from tests.integration.test_serving import MODEL, Census, census, register

pytestmark = pytest.mark.integration
__all__ = ["census"]  # the module-scoped fixture, shared with test_serving

ROWS = 4


def _input(x: np.ndarray) -> triton_grpc.InferInput:
    inp = triton_grpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_triton_extensions_over_grpc_and_rest(
    start_service: Any, store_uri: str, census: Census
) -> None:
    register(store_uri, census, 1)
    proc = start_service("serving", FLYWHEEL_SERVING_BATCH_MAX_DELAY_MS="1")
    client = triton_grpc.InferenceServerClient(proc.ready_info["grpc_address"])
    http = triton_http.InferenceServerClient(proc.ready_info["http_address"])
    extensions = client.get_server_metadata().extensions
    assert {"model_configuration", "statistics", "binary_tensor_data"} <= set(extensions)

    # Streaming (sync): responses in request order, each with its request id; a bad request
    # answers with its error and the stream goes on.
    batches = [census.holdout[i * ROWS : (i + 1) * ROWS] for i in range(6)]
    matrices = [feature_matrix(census.contract, b).astype(np.float32) for b in batches]
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i, x in enumerate(matrices):
        client.async_stream_infer(MODEL, [_input(x)], request_id=f"s{i}")
        if i == 2:
            bad = triton_grpc.InferInput("nope", [1, 16], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 16), np.float32))
            client.async_stream_infer(MODEL, [bad], request_id="bad")
    client.stop_stream()
    seen = [answers.get(timeout=10) for _ in range(len(matrices) + 1)]
    good = [r for r, e in seen if e is None]
    errors = [e for r, e in seen if e is not None]
    assert [r.get_response().id for r in good] == [f"s{i}" for i in range(len(matrices))]
    for r, b in zip(good, batches, strict=True):
        np.testing.assert_allclose(
            r.as_numpy("probabilities"), census.proba(census.v1, b), atol=1e-5
        )
    assert len(errors) == 1
    assert "'nope'" in errors[0].message()

    # Streaming (aio)
    async def aio_stream() -> list[str]:
        aclient = triton_grpc_aio.InferenceServerClient(proc.ready_info["grpc_address"])

        async def requests() -> AsyncIterator[dict[str, Any]]:
            for i, x in enumerate(matrices):
                inp = triton_grpc_aio.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                yield {"model_name": MODEL, "inputs": [inp], "request_id": f"a{i}"}

        ids = []
        try:
            async for result, error in aclient.stream_infer(requests()):
                assert error is None
                ids.append(result.get_response().id)
                if len(ids) == len(matrices):
                    break
        finally:
            await aclient.close()
        return ids

    assert asyncio.run(aio_stream()) == [f"a{i}" for i in range(len(matrices))]
    answered = 2 * len(matrices)

    # ModelConfig: from the contract and the loaded version, the same on both protocols.
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["name"] == MODEL
    assert config["max_batch_size"] == 1024
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "1000"
    assert config["version_policy"]["specific"]["versions"] == ["1"]
    inputs = {i["name"]: i for i in config["input"]}
    assert list(inputs) == census.contract.feature_names
    assert inputs["AGEP"]["data_type"] == "TYPE_FP32"
    assert inputs["SCHL"]["data_type"] == "TYPE_STRING"
    matrix = json.loads(config["parameters"]["matrix_input"]["string_value"])
    assert matrix["shape"] == [-1, len(census.contract.feature_names)]
    assert {"label", "probabilities", "prediction_id"} <= {o["name"] for o in config["output"]}
    rest_config = http.get_model_config(MODEL)
    assert rest_config["max_batch_size"] == config["max_batch_size"]
    assert [i["name"] for i in rest_config["input"]] == [i["name"] for i in config["input"]]
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"

    # ModelStatistics: every answered request and the failed one, rows, durations.
    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [(MODEL, "1")]
    s = stats[0]
    assert int(s["inference_count"]) == answered * ROWS
    assert int(s["execution_count"]) == answered
    infer = s["inference_stats"]
    assert int(infer["success"]["count"]) == answered
    assert int(infer["fail"]["count"]) == 1
    assert int(infer["fail"]["ns"]) > 0
    for phase in ("success", "compute_input", "compute_infer", "compute_output"):
        assert int(infer[phase]["ns"]) > 0, phase
    assert int(infer["compute_infer"]["ns"]) < int(infer["success"]["ns"])
    rest_stats = http.get_inference_statistics(MODEL)["model_stats"][0]
    assert rest_stats["inference_count"] == answered * ROWS
    assert http.get_inference_statistics()["model_stats"][0]["name"] == MODEL

    # RepositoryIndex: every contract with its state.
    index = client.get_model_repository_index(as_json=True)["models"]
    states = {m["name"]: m.get("state") for m in index}
    assert states[MODEL] == "READY"
    assert set(states) >= set(proc.ready_info["models"])
    assert any(m.get("state") == "UNAVAILABLE" for m in index)  # contracts with no model
    assert [m["name"] for m in http.get_model_repository_index(query_params=None)] == [
        m["name"] for m in index
    ]
    # Load / unload: refused, pointing at `flywheel promote`.
    for call in (client.load_model, client.unload_model, http.load_model, http.unload_model):
        with pytest.raises(InferenceServerException) as err:
            call(MODEL)
        assert "flywheel promote" in err.value.message()
    client.close()
    http.close()
