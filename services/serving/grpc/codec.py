"""Protobuf <-> data-plane conversion; ``pb2`` objects stop here.

Inputs come from typed ``contents`` or from ``raw_input_contents`` (one entry per input,
in order). Responses use raw contents when the request did, typed contents otherwise,
as Triton does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.protogen import inference_pb2 as pb

from ..errors import invalid
from ..inputs import TensorSpec
from ..tensors import Tensor, decode_raw, element_count, encode_bytes, numpy_dtype
from ..types import InferRequest, InferResponse, OutputTensor

# datatype -> (InferTensorContents field, numpy dtype of that field)
_CONTENTS: dict[str, tuple[str, Any]] = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}


def _typed(t: Any, shape: tuple[int, ...]) -> np.ndarray:
    count = element_count(t.name, shape)
    if t.datatype == "BYTES":
        values = t.contents.bytes_contents
        if len(values) != count:
            raise invalid(
                f"input {t.name!r}: {len(values)} BYTES elements, but shape {list(shape)} "
                f"needs {count}"
            )
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out
    field = _CONTENTS.get(t.datatype)
    if field is None:
        numpy_dtype(t.name, t.datatype)  # BF16 and unknown names: their own message
        raise invalid(f"input {t.name!r}: datatype {t.datatype} needs raw contents")
    values = getattr(t.contents, field[0])
    if len(values) != count:
        raise invalid(
            f"input {t.name!r}: {len(values)} elements in {field[0]}, but shape {list(shape)} "
            f"needs {count}"
        )
    return np.fromiter(values, dtype=field[1], count=count)


def decode_request(request: pb.ModelInferRequest) -> InferRequest:
    """The data-plane request of a ``ModelInferRequest``."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for i, t in enumerate(request.inputs):
        shape = tuple(t.shape)
        values = decode_raw(t.name, t.datatype, shape, raw[i]) if raw else _typed(t, shape)
        tensors.append(Tensor(t.name, t.datatype, shape, values))
    return InferRequest(
        request.model_name,
        request.model_version,
        request.id,
        tensors,
        [o.name for o in request.outputs],
        bool(raw),
    )


def _param(value: str | bool | int | float) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=value)


class ResponseEncoder:
    """Builds ``ModelInferResponse`` messages, reusing what repeats between requests.

    Everything but the id and the tensor contents (names, version, parameters, output
    datatypes and shapes) is the same for every request a model version answers in one
    role at one batch size: that part is built once, serialised, and each response starts
    as a parse of it (a few microseconds instead of a dozen field assignments).

    Args:
        cache_size: the most distinct templates kept (the cache is emptied when full, so
            clients sending ever-new batch sizes cannot grow it without bound).
    """

    def __init__(self, cache_size: int = 256):
        self.cache_size = cache_size
        self._templates: dict[tuple[Any, ...], bytes] = {}

    def encode(self, response: InferResponse) -> pb.ModelInferResponse:
        """The ``ModelInferResponse`` of a data-plane response."""
        key = (
            response.model_name,
            response.model_version,
            tuple(response.parameters.items()),
            tuple((t.name, t.datatype, t.shape) for t in response.outputs),
            response.raw,
        )
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= self.cache_size:
                self._templates.clear()
            template = self._templates[key] = _skeleton(response).SerializeToString()
        out = pb.ModelInferResponse.FromString(template)
        if response.id:
            out.id = response.id
        if response.raw:
            out.raw_output_contents.extend([_raw(t) for t in response.outputs])
            return out
        for tensor, t in zip(out.outputs, response.outputs, strict=True):
            if t.datatype == "BYTES":
                tensor.contents.bytes_contents.extend(list(t.values))
            else:
                field = getattr(tensor.contents, _CONTENTS[t.datatype][0])
                field.extend(np.asarray(t.values).ravel().tolist())
        return out


def _skeleton(response: InferResponse) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version
    )
    for key, value in response.parameters.items():
        out.parameters[key].string_param = value
    for t in response.outputs:
        out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
    return out


def _raw(t: OutputTensor) -> bytes:
    if t.datatype == "BYTES":
        return encode_bytes(t.values)
    array = np.asarray(t.values)
    if array.dtype.byteorder == ">":  # raw contents are little-endian
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    """One ``TensorMetadata`` entry."""
    meta = pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )
    for key, value in spec.parameters.items():
        meta.parameters[key].CopyFrom(_param(value))
    return meta
