"""Graceful drain: SIGTERM under a 16-client load over gRPC and REST fails no request sent
before readiness turned false.

Eight tritonclient.grpc and eight tritonclient.http clients call ModelInfer in a loop while
a watcher polls ``/v2/health/ready`` and gRPC health; once enough answers came back the
process gets SIGTERM. Every request sent before the watcher first saw readiness false must
have been answered (the watcher sees the flip late, never early, so that set includes
requests sent after the real flip: the check is stricter than the promise).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.conftest import DATA, need_data
from tests.reliability.helpers import CENSUS, report

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

CLIENTS_PER_PROTOCOL = 8
DRAIN_DELAY_S = 1.0


class Outcomes:
    """Every call's send time and result, across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: list[tuple[str, float]] = []
        self.failed: list[tuple[str, float, str]] = []
        self.enough = threading.Event()

    def record(self, protocol: str, sent: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok.append((protocol, sent))
                if len(self.ok) >= 400:
                    self.enough.set()
            else:
                self.failed.append((protocol, sent, error))


def _grpc_client(address: str, x: np.ndarray, out: Outcomes, stop: threading.Event) -> None:
    client = triton_grpc.InferenceServerClient(address)
    inp = triton_grpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    while not stop.is_set():
        sent = time.monotonic()
        try:
            client.infer(CENSUS.name, [inp], client_timeout=10)
            out.record("grpc", sent, None)
        except InferenceServerException as exc:
            out.record("grpc", sent, str(exc))
            time.sleep(0.02)
    client.close()


def _http_client(address: str, x: np.ndarray, out: Outcomes, stop: threading.Event) -> None:
    client = triton_http.InferenceServerClient(address, network_timeout=10)
    inp = triton_http.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    while not stop.is_set():
        sent = time.monotonic()
        try:
            client.infer(CENSUS.name, [inp])
            out.record("http", sent, None)
        except Exception as exc:  # refused connections surface as OS or gevent errors
            out.record("http", sent, repr(exc))
            time.sleep(0.02)
    client.close()


def _watch(
    http: str,
    grpc_address: str,
    seen: dict[str, float],
    watching: threading.Event,
    stop: threading.Event,
) -> None:
    """The send time of the first probe of each readiness signal that answered false (or
    failed), recorded only after that signal was once seen true."""
    channel = grpc.insecure_channel(grpc_address)
    health = health_pb2_grpc.HealthStub(channel)
    was_ready: set[str] = set()

    def saw(name: str, ready: bool, sent: float) -> None:
        if ready:
            was_ready.add(name)
            if len(was_ready) == 2:
                watching.set()
        elif name in was_ready:
            seen[name] = sent

    while not stop.is_set() and len(seen) < 2:
        if "http" not in seen:
            sent = time.monotonic()
            try:
                reply = httpx.get(f"http://{http}/v2/health/ready", timeout=2)
                saw("http", reply.status_code == 200, sent)
            except httpx.HTTPError:
                saw("http", False, sent)
        if "grpc" not in seen:
            sent = time.monotonic()
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                saw("grpc", status == health_pb2.HealthCheckResponse.SERVING, sent)
            except grpc.RpcError:
                saw("grpc", False, sent)
        time.sleep(0.005)
    channel.close()


def test_sigterm_under_load_fails_no_request_sent_before_readiness_turned_false(
    start_service: Any, store_uri: str
) -> None:
    need_data("employment_MA_reference.pq")
    _, onnx = fit_model(CENSUS, census_rows(DATA, 300))
    register_model(Registry(ArtifactStore(store_uri)), CENSUS, onnx, dataset_version="d1")
    proc = start_service(
        "serving",
        FLYWHEEL_SERVING_DRAIN_DELAY_S=str(DRAIN_DELAY_S),
        FLYWHEEL_SERVING_DRAIN_GRACE_S="10",
    )
    grpc_address, http_address = proc.ready_info["grpc_address"], proc.ready_info["http_address"]
    x = feature_matrix(CENSUS, census_rows(DATA, 4, offset=2000)).astype(np.float32)
    out, stop, watching, seen = Outcomes(), threading.Event(), threading.Event(), {}
    threads = [
        threading.Thread(target=_grpc_client, args=(grpc_address, x, out, stop), daemon=True)
        for _ in range(CLIENTS_PER_PROTOCOL)
    ] + [
        threading.Thread(target=_http_client, args=(http_address, x, out, stop), daemon=True)
        for _ in range(CLIENTS_PER_PROTOCOL)
    ]
    for t in threads:
        t.start()
    assert out.enough.wait(60), f"no load: {out.failed[:3]}"
    watcher = threading.Thread(
        target=_watch, args=(http_address, grpc_address, seen, watching, stop), daemon=True
    )
    watcher.start()
    assert watching.wait(10), "the watcher never saw both readiness signals true"
    signalled = time.monotonic()
    code = proc.terminate(timeout=30)
    exited = time.monotonic()
    stop.set()
    for t in [*threads, watcher]:
        t.join(15)
    assert code == 0, "\n".join(list(proc.tail)[-20:])
    assert set(seen) == {"http", "grpc"}, seen
    not_ready = min(seen.values())
    before = [f for f in out.failed if f[1] < not_ready]
    ok_before = sum(1 for _, sent in out.ok if sent < not_ready)
    report(
        "drain",
        clients=2 * CLIENTS_PER_PROTOCOL,
        answered_before_not_ready=ok_before,
        failed_before_not_ready=len(before),
        answered_after_not_ready=sum(1 for _, sent in out.ok if sent >= not_ready),
        refused_after_not_ready=len(out.failed) - len(before),
        not_ready_after_sigterm_ms=round((not_ready - signalled) * 1000, 1),
        exit_after_sigterm_s=round(exited - signalled, 2),
    )
    assert before == [], before[:5]
    assert ok_before >= 400
    # The drain delay kept answering after readiness turned false.
    assert any(sent >= not_ready for _, sent in out.ok)
