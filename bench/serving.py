"""Serving benchmark: Flywheel vs a minimal grpc.aio + ORT server vs MLServer 1.7 vs raw ORT.

Everything runs side by side in one run on the same census model (the contract pipeline
fitted on census rows, exported to ONNX; MLServer serves the same fitted pipeline with
its sklearn runtime) and the same tritonclient load: sequential batch 1, 16 concurrent
batch 1, 16 concurrent batch 64, then Flywheel with adaptive batching off and on at
concurrency 1, 4, 16 and 64. Flywheel runs as a real process with every feature on
(prediction events to an embedded Kafka broker, metrics, tagging).

MLServer is installed by the benchmark into ``bench/.venv-mlserver`` (never a project
dependency), with ``uvloop==0.21.0`` pinned (its worker crashes with uvloop 0.23,
MLServer issue 2286) and the project's scikit-learn version so the pickle loads.

``python -m bench.serving [--quick]``; ``run(quick)`` returns the figures as a dict.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench._venv import ensure_venv

ROOT = Path(__file__).resolve().parent.parent
MODEL = "census_employment"
MLSERVER_VENV = ROOT / "bench" / ".venv-mlserver"
MLSERVER_PACKAGES = ["mlserver==1.7.*", "mlserver-sklearn", "uvloop==0.21.0"]
LOADS = (("sequential b1", 1, 1), ("16 concurrent b1", 16, 1), ("16 concurrent b64", 16, 64))
BATCHING_CONCURRENCY = (1, 4, 16, 64)
BATCH_DELAY_MS = 2.0
RESULTS = ROOT / "bench" / "results" / "serving.json"
SLICE_S = 1.0

Inputs = Callable[[int], tuple[list[Any], dict[str, Any] | None]]


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {timeout}s")
        time.sleep(0.1)


def _ready(address: str) -> bool:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    try:
        with triton.InferenceServerClient(address) as client:
            return bool(client.is_server_ready() and client.is_model_ready(MODEL))
    except InferenceServerException:
        return False


async def _drive(
    address: str, inputs: list[Any], params: dict[str, Any] | None, concurrency: int, seconds: float
) -> tuple[list[float], float, int]:
    """(latencies, elapsed seconds, errors) of ``concurrency`` closed-loop clients, over
    gRPC (``host:port``) or REST (``http://host:port``, tritonclient.http.aio)."""
    import tritonclient.grpc.aio as triton_aio
    import tritonclient.http.aio as triton_http_aio
    from tritonclient.utils import InferenceServerException

    client: Any
    if address.startswith("http://"):
        client = triton_http_aio.InferenceServerClient(
            address.removeprefix("http://"), conn_limit=max(concurrency, 1)
        )
    else:
        client = triton_aio.InferenceServerClient(address)
    for _ in range(50):  # warm up connections and code paths
        await client.infer(MODEL, inputs, parameters=params)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await client.infer(MODEL, inputs, parameters=params)
            except InferenceServerException:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await client.close()
    return latencies, elapsed, errors


def _figures(latencies: list[float], elapsed: float, errors: int, batch: int) -> dict[str, float]:
    latencies = sorted(latencies)
    rps = len(latencies) / elapsed
    return {
        "p50_ms": round(1000 * statistics.median(latencies), 3),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 3),
        "req_per_s": round(rps, 1),
        "rows_per_s": round(rps * batch, 1),
        "requests": len(latencies),
        "errors": errors,
    }


def compare(
    servers: dict[str, tuple[str, Inputs]], concurrency: int, batch: int, seconds: float
) -> dict[str, dict[str, float]]:
    """One load against several servers, interleaved in short slices.

    This machine's speed drifts by tens of percent over seconds (shared cores); taking
    turns slice by slice exposes every server to the same drift, so ratios stay fair.
    """
    slices = max(1, int(seconds / SLICE_S))
    acc = {name: ([], 0.0, 0) for name in servers}
    prepared = {name: make(batch) for name, (_, make) in servers.items()}
    for _ in range(slices):
        for name, (address, _) in servers.items():
            inputs, params = prepared[name]
            lat, elapsed, errors = asyncio.run(
                _drive(address, inputs, params, concurrency, seconds / slices)
            )
            done, total, failed = acc[name]
            acc[name] = ([*done, *lat], total + elapsed, failed + errors)
    return {name: _figures(lat, el, err, batch) for name, (lat, el, err) in acc.items()}


# --- the model ---------------------------------------------------------------------------


class Fixture:
    """The census model, its files, and request builders for each server."""

    def __init__(self, work: Path):
        import pandas as pd

        from services.serving.testing import census_rows, feature_matrix, fit_model, register_model
        from shared.contract import load_contract
        from shared.features import to_frame
        from shared.registry import Registry
        from shared.store import ArtifactStore

        self.work = work
        data = ROOT / "var" / "data"
        self.contract = load_contract(ROOT / "contracts" / f"{MODEL}.yaml")
        self.pipeline, self.onnx = fit_model(self.contract, census_rows(data, 5000))
        self.onnx_path = work / "model.onnx"
        self.onnx_path.write_bytes(self.onnx)
        self.store = f"file://{work / 'store'}"
        register_model(
            Registry(ArtifactStore(self.store)), self.contract, self.onnx, dataset_version="bench"
        )
        rows = census_rows(data, 64, offset=10_000)
        self.matrix = feature_matrix(self.contract, rows).astype(np.float32)
        frame = to_frame(
            self.contract, {f: rows[f].to_numpy() for f in self.contract.feature_names}
        )
        self.frame: pd.DataFrame = frame

    def matrix_inputs(self, batch: int) -> tuple[list[Any], dict[str, Any] | None]:
        import tritonclient.grpc as triton

        x = np.ascontiguousarray(self.matrix[:batch])
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return [inp], None

    def rest_inputs(self, batch: int) -> tuple[list[Any], dict[str, Any] | None]:
        """The matrix over REST with Triton's binary tensor data (tritonclient's default)."""
        import tritonclient.http as triton_http

        x = np.ascontiguousarray(self.matrix[:batch])
        inp = triton_http.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        return [inp], None

    def rest_json_inputs(self, batch: int) -> tuple[list[Any], dict[str, Any] | None]:
        """The matrix over REST as plain JSON (what MLServer's REST takes)."""
        import tritonclient.http as triton_http

        x = np.ascontiguousarray(self.matrix[:batch])
        inp = triton_http.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=False)
        return [inp], None

    def mlserver_rest_inputs(self, batch: int) -> tuple[list[Any], dict[str, Any] | None]:
        """MLServer's columns over REST as JSON (MLServer has no binary tensor data)."""
        import tritonclient.http as triton_http

        inputs = []
        for f in self.contract.features:
            col = self.frame[f.name].to_numpy()[:batch]
            if f.is_numeric:
                inp = triton_http.InferInput(f.name, [batch], "FP64")
                inp.set_data_from_numpy(col.astype(np.float64), binary_data=False)
            else:
                inp = triton_http.InferInput(f.name, [batch], "BYTES")
                inp.set_data_from_numpy(col.astype(np.object_), binary_data=False)
                inp._parameters["content_type"] = "str"
            inputs.append(inp)
        return inputs, {"content_type": "pd"}

    def mlserver_inputs(self, batch: int) -> tuple[list[Any], dict[str, Any] | None]:
        """Columns decoded by MLServer's pandas codec into the frame the pipeline expects."""
        import tritonclient.grpc as triton

        inputs = []
        for f in self.contract.features:
            col = self.frame[f.name].to_numpy()[:batch]
            if f.is_numeric:
                inp = triton.InferInput(f.name, [batch], "FP64")
                inp.set_data_from_numpy(col.astype(np.float64))
            else:
                inp = triton.InferInput(f.name, [batch], "BYTES")
                inp.set_data_from_numpy(col.astype(np.object_))
                # tritonclient has no public setter for input parameters
                inp._get_tensor().parameters["content_type"].string_param = "str"
            inputs.append(inp)
        return inputs, {"content_type": "pd"}


def raw_ort(fx: Fixture, seconds: float) -> dict[str, Any]:
    """Microseconds per ``session.run`` at batch 1 and 64, feeds prepared in advance."""
    import onnxruntime as ort

    from shared.features import onnx_feeds

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(fx.onnx, opts, providers=["CPUExecutionProvider"])
    out: dict[str, Any] = {}
    for batch in (1, 64):
        feeds = onnx_feeds(fx.contract, fx.frame.iloc[:batch])
        times = []
        deadline = time.perf_counter() + seconds / 2
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        out[f"b{batch}_p50_us"] = round(1e6 * statistics.median(times), 1)
    return out


# --- servers -----------------------------------------------------------------------------


def _free_port() -> int:
    from shared.embedded import free_port

    return free_port()


def start_minimal(fx: Fixture) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.minimal_server",
            str(fx.onnx_path),
            str(ROOT / "contracts" / f"{MODEL}.yaml"),
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    address = f"127.0.0.1:{port}"
    _wait(lambda: _ready(address), 60, "minimal server")
    return proc, address


def start_flywheel(fx: Fixture, broker: str, delay_ms: float) -> tuple[Any, str]:
    from shared.procs import ServiceProcess

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "FLYWHEEL_STORE": fx.store,
        "FLYWHEEL_CONTRACTS": str(ROOT / "contracts"),
        "FLYWHEEL_SERVING_GRPC_PORT": str(_free_port()),
        "FLYWHEEL_SERVING_HTTP_PORT": "0",
        "FLYWHEEL_SERVING_METRICS_PORT": "0",
        "FLYWHEEL_SERVING_BATCH_MAX_DELAY_MS": str(delay_ms),
        "FLYWHEEL_SERVING_MAX_BATCH_SIZE": "4096",
    }
    proc = ServiceProcess("serving", env=env)
    proc.start()
    info = proc.wait_ready(120)
    return proc, str(info["grpc_address"])


def flywheel_events(proc: Any) -> dict[str, float]:
    """Prediction events published and dropped, from the service's metrics."""
    port = proc.ready_info["metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {"published": 0.0, "dropped": 0.0}
    for line in text.splitlines():
        if line.startswith("flywheel_serving_prediction_events_published_total{"):
            out["published"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("flywheel_serving_prediction_events_dropped_total{"):
            out["dropped"] += float(line.rsplit(" ", 1)[1])
    return out


def ensure_mlserver() -> Path:
    """The MLServer venv's ``mlserver`` executable, installing it on first use."""
    import sklearn

    packages = [*MLSERVER_PACKAGES, f"scikit-learn=={sklearn.__version__}"]
    return ensure_venv(MLSERVER_VENV, packages, "mlserver") / "mlserver"


def start_mlserver(fx: Fixture) -> tuple[subprocess.Popen[bytes], str, str]:
    """MLServer serving the pipeline; (process, gRPC address, REST ``http://`` address)."""
    import joblib

    exe = ensure_mlserver()
    folder = fx.work / "mlserver"
    folder.mkdir(exist_ok=True)
    joblib.dump(fx.pipeline, folder / "model.joblib")
    grpc_port, http_port = _free_port(), _free_port()
    (folder / "settings.json").write_text(
        json.dumps({"http_port": http_port, "grpc_port": grpc_port, "metrics_port": _free_port()})
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "1"},
            }
        )
    )
    log = open(fx.work / "mlserver.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [str(exe), "start", str(folder)],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": f"{exe.parent}:{os.environ['PATH']}"},
    )
    address = f"127.0.0.1:{grpc_port}"
    _wait(lambda: proc.poll() is None and _ready(address), 180, "MLServer")
    return proc, address, f"http://127.0.0.1:{http_port}"


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the run -----------------------------------------------------------------------------


def run(quick: bool = False) -> dict[str, Any]:
    """Measure everything; the figures by server and load."""
    from shared.embedded import EmbeddedBroker

    seconds = 2.0 if quick else 8.0
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    fx = Fixture(work)
    results: dict[str, Any] = {"seconds_per_load": seconds, "raw_ort": raw_ort(fx, seconds)}
    results["batching_delay_ms"] = BATCH_DELAY_MS
    with EmbeddedBroker(_free_port(), log=work / "broker.log") as broker:
        minimal, minimal_address = start_minimal(fx)
        flywheel, flywheel_address = start_flywheel(fx, broker.bootstrap, 0.0)
        batching, batching_address = start_flywheel(fx, broker.bootstrap, BATCH_DELAY_MS)
        try:
            pair = {
                "flywheel": (flywheel_address, fx.matrix_inputs),
                "minimal": (minimal_address, fx.matrix_inputs),
            }
            results["flywheel"], results["minimal"] = {}, {}
            for name, c, b in LOADS:
                got = compare(pair, c, b, seconds)
                results["flywheel"][name] = got["flywheel"]
                results["minimal"][name] = got["minimal"]
            # REST beside gRPC on the same Flywheel process, interleaved likewise.
            rest = f"http://{flywheel.ready_info['http_address']}"
            protocols: dict[str, tuple[str, Inputs]] = {
                "grpc": (flywheel_address, fx.matrix_inputs),
                "rest_binary": (rest, fx.rest_inputs),
                "rest_json": (rest, fx.rest_json_inputs),
            }
            results["flywheel_protocols"] = {}
            for name, c, b in LOADS:
                results["flywheel_protocols"][name] = compare(protocols, c, b, seconds)
            results["flywheel_events"] = flywheel_events(flywheel)
            modes = {
                "batching_off": (flywheel_address, fx.matrix_inputs),
                "batching_on": (batching_address, fx.matrix_inputs),
            }
            results["batching_off"], results["batching_on"] = {}, {}
            for c in BATCHING_CONCURRENCY:
                got = compare(modes, c, 1, seconds)
                results["batching_off"][f"c{c}"] = got["batching_off"]
                results["batching_on"][f"c{c}"] = got["batching_on"]
        finally:
            _stop(minimal)
            flywheel.terminate()
            batching.terminate()

    try:
        mlserver, address, mlserver_rest = start_mlserver(fx)
    except Exception as exc:  # report why, keep the other figures
        results["mlserver"] = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        try:
            results["mlserver"] = {
                name: compare({"mlserver": (address, fx.mlserver_inputs)}, c, b, seconds)[
                    "mlserver"
                ]
                for name, c, b in LOADS
            }
            results["mlserver_rest"] = {
                name: compare(
                    {"mlserver_rest": (mlserver_rest, fx.mlserver_rest_inputs)}, c, b, seconds
                )["mlserver_rest"]
                for name, c, b in LOADS
            }
        finally:
            _stop(mlserver)
    results["summary"] = summary(results)
    return results


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The two targets: p50 vs the minimal server, throughput vs MLServer."""
    out: dict[str, Any] = {}
    fw, mini = results["flywheel"], results["minimal"]
    for name, _, _ in LOADS:
        out[f"p50_ratio_vs_minimal_{name}"] = round(fw[name]["p50_ms"] / mini[name]["p50_ms"], 2)
        out[f"throughput_ratio_vs_minimal_{name}"] = round(
            fw[name]["req_per_s"] / mini[name]["req_per_s"], 2
        )
    protocols = results.get("flywheel_protocols", {})
    for name, _, _ in LOADS:
        if name in protocols:
            by = protocols[name]
            for rest in ("rest_binary", "rest_json"):
                out[f"throughput_ratio_{rest}_vs_grpc_{name}"] = round(
                    by[rest]["req_per_s"] / by["grpc"]["req_per_s"], 2
                )
    ml_rest = results.get("mlserver_rest", {})
    for name, _, _ in LOADS:
        if name in protocols and isinstance(ml_rest.get(name), dict):
            out[f"throughput_ratio_rest_json_vs_mlserver_rest_{name}"] = round(
                protocols[name]["rest_json"]["req_per_s"] / ml_rest[name]["req_per_s"], 2
            )
    ml = results.get("mlserver", {})
    if "16 concurrent b1" in ml:
        for name, _, _ in LOADS:
            out[f"throughput_ratio_vs_mlserver_{name}"] = round(
                fw[name]["req_per_s"] / ml[name]["req_per_s"], 2
            )
    return out


def main() -> None:
    """Print the figures as a table and JSON, and write them to ``bench/results/serving.json``."""
    results = run(quick="--quick" in sys.argv)
    print(f"raw ORT: {results['raw_ort']}")
    print(
        f"{'server':<10} {'load':<20} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'rows/s':>10} err"
    )
    for server in ("flywheel", "minimal", "mlserver", "mlserver_rest"):
        for load, r in results.get(server, {}).items():
            if isinstance(r, dict):
                print(
                    f"{server:<10} {load:<20} {r['p50_ms']:>8} {r['p99_ms']:>8} "
                    f"{r['req_per_s']:>9} {r['rows_per_s']:>10} {r['errors']:>4}"
                )
            else:
                print(f"{server:<10} {load}: {r}")
    for load, by in results.get("flywheel_protocols", {}).items():
        for protocol, r in by.items():
            print(f"{'fw ' + protocol:<14} {load:<20} p50 {r['p50_ms']} ms  {r['req_per_s']} req/s")
    for mode in ("batching_off", "batching_on"):
        for c, r in results[mode].items():
            print(f"{mode:<13} {c:<5} p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms", end="  ")
            print(f"{r['req_per_s']} req/s")
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
