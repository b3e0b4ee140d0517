"""The REST converter: every OIP datatype from JSON and from binary tensor data gives the
same tensor the gRPC raw path gives; outputs as JSON or binary; clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.serving.errors import ServingError
from services.serving.rest.convert import OutputPlan, decode_request, encode_response
from services.serving.tensors import NUMPY_DTYPES, decode_raw, encode_bytes
from services.serving.types import InferResponse, OutputTensor

VALUES = {
    "BOOL": [[True, False], [False, True]],
    "INT8": [[-128, 0], [1, 127]],
    "INT16": [[-32768, 0], [1, 32767]],
    "INT32": [[-(2**31), 0], [1, 2**31 - 1]],
    "INT64": [[-(2**63), 0], [1, 2**63 - 1]],
    "UINT8": [[0, 1], [2, 255]],
    "UINT16": [[0, 1], [2, 65535]],
    "UINT32": [[0, 1], [2, 2**32 - 1]],
    "UINT64": [[0, 1], [2, 2**64 - 1]],
    "FP16": [[0.5, -1.0], [2.0, 65504.0]],
    "FP32": [[0.25, -1.5], [3.0, float("nan")]],
    "FP64": [[1e-300, -2.0], [3.5, 1e300]],
}


def _body(doc: dict[str, object], *binary: bytes) -> tuple[bytes, str | None]:
    header = json.dumps(doc).encode()
    if not binary:
        return header, None
    return header + b"".join(binary), str(len(header))


@pytest.mark.parametrize("datatype", sorted(VALUES))
def test_json_and_binary_data_decode_to_the_raw_tensor(datatype: str) -> None:
    expected = np.array(VALUES[datatype], dtype=NUMPY_DTYPES[datatype]).ravel()
    raw = expected.tobytes()
    tensor = {"name": "x", "shape": [2, 2], "datatype": datatype}
    as_json, _ = _body({"inputs": [{**tensor, "data": VALUES[datatype]}]})
    as_binary, length = _body(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}, raw
    )
    grpc_raw = decode_raw("x", datatype, (2, 2), raw)
    for body, header in ((as_json, None), (as_binary, length)):
        request, _ = decode_request("m", "", body, header)
        (got,) = request.inputs
        assert got.datatype == datatype
        assert got.shape == (2, 2)
        assert got.values.dtype == grpc_raw.dtype
        np.testing.assert_array_equal(got.values, grpc_raw)


def test_bytes_from_json_and_binary() -> None:
    words = [b"a", b"", b"\xc3\xa9t\xc3\xa9"]
    raw = encode_bytes(words)
    as_json, _ = _body(
        {"inputs": [{"name": "w", "shape": [3], "datatype": "BYTES", "data": ["a", "", "été"]}]}
    )
    as_binary, length = _body(
        {
            "inputs": [
                {
                    "name": "w",
                    "shape": [3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        },
        raw,
    )
    for body, header in ((as_json, None), (as_binary, length)):
        (got,) = decode_request("m", "", body, header)[0].inputs
        assert list(got.values) == words


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BF16", "data": [1.0]}]}, "BF16"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1.0]}]}, "'FP8'"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0]}]}, "needs 2"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}, "range"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]}, "INT32"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]}, "BOOL"),
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}]},
            "ragged",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "needs 'data'"),
        ({"inputs": [{"name": "x", "shape": "1", "datatype": "FP32", "data": [1]}]}, "shape"),
        ({"id": 7, "inputs": []}, "'id'"),
        ({"inputs": []}, "non-empty"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_bodies_get_a_message_naming_the_problem(doc: object, needle: str) -> None:
    with pytest.raises(ServingError) as err:
        decode_request("m", "", json.dumps(doc).encode(), None)
    assert err.value.code == "INVALID_ARGUMENT"
    assert needle in err.value.message


def test_binary_sizes_must_match_the_body() -> None:
    doc = {
        "inputs": [
            {"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
        ]
    }
    body, length = _body(doc, b"\0" * 4)
    with pytest.raises(ServingError, match="runs past"):
        decode_request("m", "", body, length)
    body, length = _body(doc, b"\0" * 12)
    with pytest.raises(ServingError, match="beyond"):
        decode_request("m", "", body, length)
    with pytest.raises(ServingError, match="outside"):
        decode_request("m", "", body, "9999")


def test_outputs_as_requested_and_the_id_echoed() -> None:
    doc = {
        "id": "r1",
        "parameters": {"binary_data_output": True, "priority": 3, "custom": "ignored"},
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}],
        "outputs": [{"name": "p", "parameters": {"binary_data": False}}, {"name": "ids"}],
    }
    request, plan = decode_request("m", "2", json.dumps(doc).encode(), None)
    assert (request.id, request.model_version, request.outputs) == ("r1", "2", ["p", "ids"])
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    response = InferResponse(
        "m",
        "2",
        "r1",
        {"role": "champion"},
        [
            OutputTensor("p", "FP32", (1, 2), probabilities),
            OutputTensor("ids", "BYTES", (1,), [b"abc"]),
        ],
        False,
    )
    body, length = encode_response(response, plan)
    assert length is not None
    header = json.loads(body[:length])
    assert header["id"] == "r1"
    p, ids = header["outputs"]
    assert p["data"] == [0.25, 0.75]
    assert ids["parameters"]["binary_data_size"] == 7
    assert body[length:] == encode_bytes([b"abc"])
    as_json, none = encode_response(response, OutputPlan())
    assert none is None
    assert json.loads(as_json)["outputs"][1]["data"] == ["abc"]
