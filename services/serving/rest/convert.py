"""OIP v2 REST bodies <-> data-plane requests and responses; JSON stops here.

A request body is a JSON header, optionally followed by binary tensor data (Triton's
binary tensor data extension): the ``Inference-Header-Content-Length`` header gives the
JSON length, and each input with a ``binary_data_size`` parameter takes that many bytes,
in input order, in the OIP raw layout (the same one gRPC's ``raw_input_contents`` uses,
decoded by the same :mod:`..tensors` functions). JSON ``data`` may be flat or nested
row-major. Outputs are binary when the output's ``binary_data`` parameter says so, else
when the request's ``binary_data_output`` parameter does, else JSON. Request and tensor
parameters other than these (``priority``, ``timeout``, ``sequence_*``, custom ones) are
ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from ..errors import invalid
from ..tensors import Tensor, decode_raw, element_count, encode_bytes, numpy_dtype
from ..types import InferRequest, InferResponse

HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header with the length of the JSON part of a body that carries binary data."""

_json_decode = msgspec.json.Decoder()
_json_encode = msgspec.json.Encoder()


@dataclass(slots=True)
class OutputPlan:
    """How the response encodes each output: binary or JSON."""

    default_binary: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        """Whether output ``name`` goes as binary data."""
        return self.binary.get(name, self.default_binary)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{what} must be a JSON object")
    return value


def _flag(params: dict[str, Any], key: str, what: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise invalid(f"{what}: parameter {key!r} must be true or false")
    return value


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise invalid(f"input {name!r}: 'shape' must be a list of integers")
    return tuple(value)


def _json_values(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    count = element_count(name, shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        try:
            flat = np.array(data, dtype=object).ravel()
        except ValueError:
            raise invalid(f"input {name!r}: 'data' is a ragged nested list") from None
        if len(flat) != count:
            raise invalid(
                f"input {name!r}: {len(flat)} BYTES elements, but shape {list(shape)} needs {count}"
            )
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise invalid(f"input {name!r}: BYTES element {i} is not a string")
            out[i] = v.encode()
        return out
    dtype = numpy_dtype(name, datatype)
    try:
        parsed = np.array(data)
    except ValueError:
        raise invalid(f"input {name!r}: 'data' is a ragged nested list") from None
    if dtype.kind in "iu" and parsed.dtype.kind in "fO":
        # Integers beyond int64 (UINT64's upper half) parse as floats or objects: read them
        # exactly, refusing what is not an integer.
        items = np.array(data, dtype=object).ravel()
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise invalid(f"input {name!r}: 'data' holds values that are not {datatype}")
        try:
            parsed = np.array(items.tolist(), dtype=dtype)
        except OverflowError:
            raise invalid(
                f"input {name!r}: 'data' holds values outside the {datatype} range"
            ) from None
    accepted = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dtype.kind]
    if parsed.size and parsed.dtype.kind not in accepted:
        raise invalid(f"input {name!r}: 'data' holds values that are not {datatype}")
    flat = parsed.ravel()
    if len(flat) != count:
        raise invalid(
            f"input {name!r}: {len(flat)} elements in 'data', but shape {list(shape)} needs {count}"
        )
    if dtype.kind in "iu" and flat.size:
        info = np.iinfo(dtype.type)  # type: ignore[type-var]
        if int(flat.min()) < info.min or int(flat.max()) > info.max:
            raise invalid(f"input {name!r}: 'data' holds values outside the {datatype} range")
    return flat.astype(dtype)


def _parse(header: bytes) -> Any:
    try:
        return _json_decode.decode(header)
    except msgspec.DecodeError as exc:
        # NaN / Infinity are not JSON, but tritonclient (Python's json) writes them for
        # missing values: the standard library reads them (the slow path, only here).
        try:
            return json.loads(header)
        except (ValueError, UnicodeDecodeError):
            raise invalid(f"the request is not valid JSON: {exc}") from None


def decode_request(
    model_name: str, model_version: str, body: bytes, header_length: str | None
) -> tuple[InferRequest, OutputPlan]:
    """The data-plane request of a REST infer body, and how to encode its outputs."""
    if header_length is None:
        json_end = len(body)
    else:
        try:
            json_end = int(header_length)
        except ValueError:
            raise invalid(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
        if not 0 <= json_end <= len(body):
            raise invalid(f"{HEADER_LENGTH} {json_end} is outside the {len(body)}-byte body")
    doc = _object(_parse(body[:json_end]), "the request")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    params = _object(doc.get("parameters", {}), "'parameters'")
    plan = OutputPlan(_flag(params, "binary_data_output", "the request"))
    entries = doc.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise invalid("the request needs a non-empty 'inputs' list")
    tensors: list[Tensor] = []
    offset = json_end
    for i, entry in enumerate(entries):
        entry = _object(entry, f"input {i}")
        name, datatype = entry.get("name"), entry.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise invalid(f"input {i}: 'name' and 'datatype' must be strings")
        shape = _shape(name, entry.get("shape"))
        tparams = _object(entry.get("parameters", {}), f"input {name!r}: 'parameters'")
        size = tparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise invalid(f"input {name!r}: 'binary_data_size' must be a non-negative integer")
            if offset + size > len(body):
                raise invalid(
                    f"input {name!r}: binary_data_size {size} runs past the end of the body"
                )
            values = decode_raw(name, datatype, shape, body[offset : offset + size])
            offset += size
        elif "data" in entry:
            values = _json_values(name, datatype, shape, entry["data"])
        else:
            raise invalid(f"input {name!r}: needs 'data' or a 'binary_data_size' parameter")
        tensors.append(Tensor(name, datatype, shape, values))
    if offset != len(body):
        raise invalid(f"the body has {len(body) - offset} bytes beyond its inputs' binary data")
    outputs: list[str] = []
    requested = doc.get("outputs", [])
    if not isinstance(requested, list):
        raise invalid("'outputs' must be a list")
    for i, entry in enumerate(requested):
        entry = _object(entry, f"output {i}")
        name = entry.get("name")
        if not isinstance(name, str):
            raise invalid(f"output {i}: 'name' must be a string")
        oparams = _object(entry.get("parameters", {}), f"output {name!r}: 'parameters'")
        if "binary_data" in oparams:
            plan.binary[name] = _flag(oparams, "binary_data", f"output {name!r}")
        outputs.append(name)
    request = InferRequest(model_name, model_version, request_id, tensors, outputs, False)
    return request, plan


def encode_response(response: InferResponse, plan: OutputPlan) -> tuple[bytes, int | None]:
    """The REST body of a data-plane response, and its JSON length when binary data
    follows (the ``Inference-Header-Content-Length`` value), else None."""
    outputs: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for t in response.outputs:
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if plan.is_binary(t.name):
            if t.datatype == "BYTES":
                data = encode_bytes(t.values)
            else:
                array = np.asarray(t.values)
                data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            out["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        elif t.datatype == "BYTES":
            out["data"] = [bytes(v).decode("utf-8", "backslashreplace") for v in t.values]
        else:
            out["data"] = np.asarray(t.values).ravel().tolist()
        outputs.append(out)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        doc["id"] = response.id
    doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = _json_encode.encode(doc)
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)


def encode_json(doc: Any) -> bytes:
    """JSON bytes of a metadata or error document."""
    return _json_encode.encode(doc)
