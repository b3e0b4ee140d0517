"""The generated gRPC code matches protos/ and stays wire-compatible with tritonclient."""

from __future__ import annotations

import subprocess
import sys

import tritonclient.grpc.service_pb2 as triton_pb

from shared.protogen import inference_pb2 as pb
from tests.conftest import ROOT


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "tools/gen_proto.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_messages_share_names_and_field_numbers_with_tritonclient() -> None:
    ours = pb.DESCRIPTOR
    for name, theirs in triton_pb.DESCRIPTOR.message_types_by_name.items():
        if name not in ours.message_types_by_name:
            continue  # Triton-only extensions (streaming, repository, shared memory...)
        mine = ours.message_types_by_name[name]
        their_fields = {(f.name, f.number, f.type) for f in theirs.fields}
        assert their_fields <= {(f.name, f.number, f.type) for f in mine.fields}, name
    service = ours.services_by_name["GRPCInferenceService"]
    assert ours.package == "inference"
    assert {m.name for m in service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }


def test_a_request_round_trips_through_tritonclient_messages() -> None:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, 2.5])
    request.raw_input_contents.append(b"\x00\x01")
    theirs = triton_pb.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "m"
    assert list(theirs.inputs[0].contents.fp32_contents) == [1.5, 2.5]
    assert pb.ModelInferRequest.FromString(theirs.SerializeToString()) == request
