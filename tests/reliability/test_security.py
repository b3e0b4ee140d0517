"""No secret reaches the logs of a running service, whatever the clients send.

Serving runs as a real process with bearer tokens and Kafka SASL credentials in its
environment (the way a secret store hands them over), at debug level; clients call it
with no token, a wrong token and the right one. Not one log line may hold a token or the
password. (TLS/mTLS and token auth themselves: tests/unit/test_serving_grpc.py; SASL
pass-through: tests/unit/test_settings.py; tampered artifacts: tests/unit/test_serving.py
and tests/unit/test_training_core.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.conftest import DATA, StartService, need_data
from tests.reliability.helpers import CENSUS, metric, report

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

TOKEN = "tok-8c1f2a9e7d"  # a test credential: the thing that must not leak
WRONG = "tok-wrong-55b3e1"
PASSWORD = "sasl-pw-0f4e9b2c"


def test_tokens_and_passwords_never_reach_the_logs(
    start_service: StartService, store_uri: str
) -> None:
    need_data("employment_MA_reference.pq")
    _, onnx = fit_model(CENSUS, census_rows(DATA, 400))
    register_model(Registry(ArtifactStore(store_uri)), CENSUS, onnx, dataset_version="dv1")
    serving = start_service(
        "serving",
        FLYWHEEL_SERVING_AUTH_TOKENS=f"other-token,{TOKEN}",
        FLYWHEEL_LOG_LEVEL="DEBUG",
        # credentials configured but unused by the plaintext test broker
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="flywheel",
        KAFKA_SASL_PASSWORD=PASSWORD,
    )
    x = feature_matrix(CENSUS, census_rows(DATA, 2, offset=5000)).astype(np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client = triton.InferenceServerClient(serving.ready_info["grpc_address"])
    refused = 0
    for headers in ({}, {"authorization": f"Bearer {WRONG}"}, {"authorization": WRONG}):
        with pytest.raises(InferenceServerException, match=r"UNAUTHENTICATED|token"):
            client.infer(CENSUS.name, [inp], headers=headers)
        refused += 1
    ok = client.infer(CENSUS.name, [inp], headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.as_numpy("label").shape == (2,)
    client.close()
    assert metric(serving, "flywheel_serving_auth_failures_total") == refused
    assert serving.terminate() == 0
    lines = list(serving.tail)
    leaks = [line for line in lines if any(s in line for s in (TOKEN, WRONG, PASSWORD))]
    report("no_secret_logged", log_lines=len(lines), refused_calls=refused, leaks=len(leaks))
    assert len(lines) > 3  # the service did log (ready, requests, stop)
    assert leaks == []
