"""Serving benchmark: Flywheel against the minimal server, raw ORT and four peers.

Everything runs side by side in one run on the same census model (the contract pipeline
fitted on census rows, exported to ONNX) and the same tritonclient load: sequential
batch 1, 16 concurrent batch 1, 16 concurrent batch 64. At each load every server takes
a short slice in turn, round after round (``compare``), so the shared machine's drift
hits all of them alike. The servers:

- ``flywheel_native``: the serving service as a real process with every feature on
  (prediction events to an embedded Kafka broker, metrics, tagging) on its default gRPC
  server, pygrpc-native's (``FLYWHEEL_SERVING_GRPC_SERVER=native``: HTTP/2 and per-call
  work in Rust threads outside the GIL);
- ``flywheel``: the same on grpc.aio (``FLYWHEEL_SERVING_GRPC_SERVER=grpcio``, the server
  that runs when TLS is configured);
- ``minimal``: bench/minimal_server.py, grpc.aio + ORT and nothing else (the limit);
- ``grpc_floor``: the same server answering each request size with one precomputed
  response (no decoding, no model): grpc.aio's and the client's own per-request cost,
  the most any Python server on grpc.aio reaches. ``grpc_floor_vs_<peer>`` in the
  summary is its ratio to each peer: where a goal ratio is above it, no grpc.aio server
  can meet that goal on this machine;
- ``mlserver``: MLServer 1.7 as shipped: its sklearn runtime on the fitted pipeline
  (pickle), pandas codec, one tensor per feature; ``mlserver_rest`` the same over REST;
- ``mlserver_tuned_w0/1/2``: MLServer with a custom runtime (bench/peers/mlserver_onnx.py)
  running the same ONNX file in ORT, numpy codec, one FP32 matrix, ``parallel_workers``
  0, 1 and 2; ``mlserver_tuned`` in the summary is the fastest of the three per load;
- ``kserve``: KServe's Python model server (bench/peers/kserve_server.py), ORT, gRPC;
- ``triton``: Triton Inference Server's ``tritonserver`` from ``nvidia-pytriton``
  (bench/peers/pytriton_server.py), its Python backend running the same ORT session.

Every peer takes the same one FP32 matrix except MLServer as shipped (its sklearn
runtime needs the columns). Then Flywheel's REST beside its gRPC, and adaptive batching
off and on at concurrency 1, 4, 16 and 64, both on the default (native) server.

Each peer is installed by the benchmark into its own venv under ``bench/`` on first use
(never a project dependency); a peer that cannot start keeps its row with the error.
MLServer's venv pins ``uvloop==0.21.0`` (its worker crashes with uvloop 0.23, MLServer
issue 2286) and the project's scikit-learn version so the pickle loads.

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
PEERS = ROOT / "bench" / "peers"
MLSERVER_VENV = ROOT / "bench" / ".venv-mlserver"
MLSERVER_PACKAGES = ["mlserver==1.7.*", "mlserver-sklearn", "uvloop==0.21.0"]
MLSERVER_WORKERS = (0, 1, 2)
"""``parallel_workers`` tried for MLServer tuned: in-process, one and two worker processes."""
KSERVE_VENV = ROOT / "bench" / ".venv-kserve"
KSERVE_PACKAGES = ["kserve==0.21.*"]
PYTRITON_VENV = ROOT / "bench" / ".venv-pytriton"
PYTRITON_PACKAGES = ["nvidia-pytriton==0.7.*"]
PEER_ROWS = ("mlserver", "mlserver_tuned", "kserve", "triton")
"""The peers Flywheel's throughput is compared with in the summary."""
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
    headers: dict[str, str] | None = None
    if address.startswith("http://"):
        client = triton_http_aio.InferenceServerClient(
            address.removeprefix("http://"), conn_limit=max(concurrency, 1)
        )
        if all(getattr(i, "_raw_data", None) is None for i in inputs):
            # an all-JSON body: say so (MLServer's FastAPI reads it as a string otherwise)
            headers = {"Content-Type": "application/json"}
    else:
        client = triton_aio.InferenceServerClient(address)
    for _ in range(50):  # warm up connections and code paths
        await client.infer(MODEL, inputs, parameters=params, headers=headers)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await client.infer(MODEL, inputs, parameters=params, headers=headers)
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
        self.columns_path = work / "columns.json"
        self.columns_path.write_text(
            json.dumps([[f.name, f.is_numeric] for f in self.contract.features])
        )
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


def start_minimal(fx: Fixture, floor: bool = False) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.minimal_server",
            str(fx.onnx_path),
            str(ROOT / "contracts" / f"{MODEL}.yaml"),
            str(port),
            *(["--floor"] if floor else []),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    address = f"127.0.0.1:{port}"
    _wait(lambda: _ready(address), 60, "gRPC floor server" if floor else "minimal server")
    return proc, address


def start_flywheel(fx: Fixture, broker: str, delay_ms: float, grpc_server: str) -> tuple[Any, str]:
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
        "FLYWHEEL_SERVING_GRPC_SERVER": grpc_server,
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


def _ort_pin() -> str:
    """The project's ONNX Runtime, so every peer runs the model on the same version."""
    import onnxruntime

    return f"onnxruntime=={onnxruntime.__version__}"


def ensure_mlserver() -> Path:
    """The MLServer venv's ``mlserver`` executable, installing it on first use."""
    import sklearn

    packages = [*MLSERVER_PACKAGES, f"scikit-learn=={sklearn.__version__}", _ort_pin()]
    return ensure_venv(MLSERVER_VENV, packages, "mlserver") / "mlserver"


def _spawn(
    fx: Fixture,
    name: str,
    cmd: list[str],
    address: str,
    cwd: Path,
    timeout: float = 180,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a peer process (log in the work folder) and wait until it serves the model.

    The peer finds the model through ``BENCH_ONNX`` / ``BENCH_COLUMNS`` and the shared
    helpers on ``PYTHONPATH``; if it exits or never gets ready, the error carries the
    end of its log.
    """
    log_path = fx.work / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    env = {
        **os.environ,
        "PATH": f"{Path(cmd[0]).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(PEERS),
        "BENCH_ONNX": str(fx.onnx_path),
        "BENCH_COLUMNS": str(fx.columns_path),
        **(extra_env or {}),
    }
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(lambda: proc.poll() is None and _ready(address), timeout, name)
    except TimeoutError as exc:
        _stop(proc)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
        raise RuntimeError(f"{exc}; exit {proc.returncode}; log: " + " | ".join(tail)) from exc
    return proc


def start_mlserver(
    fx: Fixture, tuned_workers: int | None = None
) -> tuple[subprocess.Popen[bytes], str, str]:
    """MLServer; (process, gRPC address, REST ``http://`` address).

    As shipped (``tuned_workers`` None): the sklearn runtime on the pickled pipeline.
    Tuned: the ONNX runtime of bench/peers/mlserver_onnx.py with that many
    ``parallel_workers``.
    """
    import joblib

    exe = ensure_mlserver()
    tag = "mlserver" if tuned_workers is None else f"mlserver_tuned_w{tuned_workers}"
    folder = fx.work / tag
    folder.mkdir(exist_ok=True)
    grpc_port, http_port = _free_port(), _free_port()
    settings: dict[str, Any] = {
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": _free_port(),
        # Its REST gzips large responses unasked (aiohttp's default Accept-Encoding),
        # which tritonclient cannot read; compression on localhost would only cost it.
        "gzip_enabled": False,
    }
    if tuned_workers is None:
        joblib.dump(fx.pipeline, folder / "model.joblib")
        model = {
            "name": MODEL,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1"},
        }
    else:
        settings["parallel_workers"] = tuned_workers
        model = {
            "name": MODEL,
            "implementation": "mlserver_onnx.OnnxMatrixRuntime",
            "parameters": {"uri": str(fx.onnx_path), "version": "1"},
        }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    address = f"127.0.0.1:{grpc_port}"
    proc = _spawn(fx, tag, [str(exe), "start", str(folder)], address, folder)
    return proc, address, f"http://127.0.0.1:{http_port}"


def start_kserve(fx: Fixture) -> tuple[subprocess.Popen[bytes], str]:
    """KServe's model server on the matrix; (process, gRPC address)."""
    python = ensure_venv(KSERVE_VENV, [*KSERVE_PACKAGES, _ort_pin()], "python") / "python"
    grpc_port, http_port = _free_port(), _free_port()
    cmd = [str(python), str(PEERS / "kserve_server.py"), MODEL]
    cmd += ["--grpc_port", str(grpc_port), "--http_port", str(http_port), "--workers", "1"]
    address = f"127.0.0.1:{grpc_port}"
    return _spawn(fx, "kserve", cmd, address, fx.work), address


def start_triton(fx: Fixture) -> tuple[subprocess.Popen[bytes], str]:
    """Triton (PyTriton's ``tritonserver``) on the matrix; (process, gRPC address)."""
    python = ensure_venv(PYTRITON_VENV, [*PYTRITON_PACKAGES, _ort_pin()], "python") / "python"
    grpc_port = _free_port()
    cmd = [str(python), str(PEERS / "pytriton_server.py"), MODEL, str(grpc_port)]
    cmd += [str(_free_port()), str(_free_port())]
    address = f"127.0.0.1:{grpc_port}"
    # Triton's Python backend stub links libpython3.X.so by name: without this it finds
    # the system's (Debian's 3.11.2), whose C RLock lacks what this interpreter's
    # stdlib calls (``_recursion_count``), and the model fails to load.
    libs = str(Path(sys.base_prefix) / "lib")
    ld_path = ":".join(p for p in (libs, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    proc = _spawn(
        fx, "triton", cmd, address, fx.work, timeout=120, extra_env={"LD_LIBRARY_PATH": ld_path}
    )
    return proc, address


def start_peers(
    fx: Fixture, results: dict[str, Any]
) -> tuple[dict[str, tuple[str, Inputs]], list[subprocess.Popen[bytes]]]:
    """Every peer that starts: its address and request builder; a failure goes in
    ``results`` under the peer's name as ``{"error": ...}``."""
    servers: dict[str, tuple[str, Inputs]] = {}
    procs: list[subprocess.Popen[bytes]] = []

    def attempt(name: str, start: Callable[[], tuple[Any, ...]], inputs: Inputs) -> Any:
        try:
            proc, address, *rest = start()
        except Exception as exc:  # keep the row with why, measure the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            return None
        procs.append(proc)
        servers[name] = (address, inputs)
        return rest

    rest = attempt("mlserver", lambda: start_mlserver(fx), fx.mlserver_inputs)
    if rest:
        servers["mlserver_rest"] = (rest[0], fx.mlserver_rest_inputs)
    for workers in MLSERVER_WORKERS:
        attempt(
            f"mlserver_tuned_w{workers}",
            lambda w=workers: start_mlserver(fx, w),  # type: ignore[misc]
            fx.matrix_inputs,
        )
    attempt("kserve", lambda: start_kserve(fx), fx.matrix_inputs)
    attempt("triton", lambda: start_triton(fx), fx.matrix_inputs)
    return servers, procs


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
    results["mlserver_workers_tried"] = list(MLSERVER_WORKERS)
    with EmbeddedBroker(_free_port(), log=work / "broker.log") as broker:
        minimal, minimal_address = start_minimal(fx)
        floor, floor_address = start_minimal(fx, floor=True)
        flywheel, flywheel_address = start_flywheel(fx, broker.bootstrap, 0.0, "grpcio")
        native, native_address = start_flywheel(fx, broker.bootstrap, 0.0, "native")
        batching, batching_address = start_flywheel(fx, broker.bootstrap, BATCH_DELAY_MS, "native")
        peers, peer_procs = start_peers(fx, results)
        try:
            servers: dict[str, tuple[str, Inputs]] = {
                "flywheel": (flywheel_address, fx.matrix_inputs),
                "flywheel_native": (native_address, fx.matrix_inputs),
                "minimal": (minimal_address, fx.matrix_inputs),
                "grpc_floor": (floor_address, fx.matrix_inputs),
                **peers,
            }
            for name in servers:
                results[name] = {}
            for name, c, b in LOADS:
                got = compare(servers, c, b, seconds)
                for server, figures in got.items():
                    results[server][name] = figures
            for proc in peer_procs:  # the rest measures Flywheel alone
                _stop(proc)
            peer_procs = []
            # REST beside gRPC on the same (default-server) Flywheel process, interleaved
            # likewise.
            rest = f"http://{native.ready_info['http_address']}"
            protocols: dict[str, tuple[str, Inputs]] = {
                "grpc": (native_address, fx.matrix_inputs),
                "rest_binary": (rest, fx.rest_inputs),
                "rest_json": (rest, fx.rest_json_inputs),
            }
            results["flywheel_protocols"] = {}
            for name, c, b in LOADS:
                results["flywheel_protocols"][name] = compare(protocols, c, b, seconds)
            results["flywheel_events"] = flywheel_events(flywheel)
            results["flywheel_native_events"] = flywheel_events(native)
            modes = {
                "batching_off": (native_address, fx.matrix_inputs),
                "batching_on": (batching_address, fx.matrix_inputs),
            }
            results["batching_off"], results["batching_on"] = {}, {}
            for c in BATCHING_CONCURRENCY:
                got = compare(modes, c, 1, seconds)
                results["batching_off"][f"c{c}"] = got["batching_off"]
                results["batching_on"][f"c{c}"] = got["batching_on"]
        finally:
            for proc in peer_procs:
                _stop(proc)
            _stop(minimal)
            _stop(floor)
            flywheel.terminate()
            native.terminate()
            batching.terminate()
    results["mlserver_tuned"] = best_tuned(results)
    results["summary"] = summary(results)
    return results


def best_tuned(results: dict[str, Any]) -> dict[str, Any]:
    """MLServer tuned at each load: the fastest ``parallel_workers`` tried (the peer's
    best case), or the errors if none started."""
    out: dict[str, Any] = {}
    rows = {w: results.get(f"mlserver_tuned_w{w}", {}) for w in MLSERVER_WORKERS}
    for name, _, _ in LOADS:
        measured = [(w, r[name]) for w, r in rows.items() if isinstance(r.get(name), dict)]
        if measured:
            w, best = max(measured, key=lambda item: item[1]["req_per_s"])
            out[name] = {**best, "parallel_workers": w}
    if not out:
        out["error"] = "; ".join(f"w{w}: {r.get('error')}" for w, r in rows.items())
    return out


def _ratios(ours: dict[str, Any], theirs: dict[str, Any], field: str) -> list[tuple[str, float]]:
    """(load, ours / theirs of ``field``) at each load both measured (a row may hold an
    ``error`` instead), two decimals."""
    return [
        (name, round(ours[name][field] / theirs[name][field], 2))
        for name, _, _ in LOADS
        if isinstance(ours.get(name), dict)
        and isinstance(theirs.get(name), dict)
        and theirs[name][field]
    ]


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The ratios the goals read: Flywheel vs the minimal server (p50, p99, req/s) and
    vs each peer (req/s)."""
    out: dict[str, Any] = {}

    def ratios(key: str, ours: str, theirs: str, field: str = "req_per_s") -> None:
        for name, value in _ratios(results.get(ours, {}), results.get(theirs, {}), field):
            out[f"{key}_{name}"] = value

    # grpcio's ratios, and the same of the native server (the default) under "native_".
    for prefix, server in (("", "flywheel"), ("native_", "flywheel_native")):
        ratios(f"{prefix}p50_ratio_vs_minimal", server, "minimal", "p50_ms")
        ratios(f"{prefix}p99_ratio_vs_minimal", server, "minimal", "p99_ms")
        ratios(f"{prefix}throughput_ratio_vs_minimal", server, "minimal")
        ratios(f"{prefix}throughput_ratio_vs_grpc_floor", server, "grpc_floor")
        for peer in PEER_ROWS:
            ratios(f"{prefix}throughput_ratio_vs_{peer}", server, peer)
    ratios("native_throughput_ratio_vs_grpcio", "flywheel_native", "flywheel")
    for peer in PEER_ROWS:
        ratios(f"throughput_ratio_grpc_floor_vs_{peer}", "grpc_floor", peer)
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
    return out


def main() -> None:
    """Print the figures as a table and JSON, and write them to ``bench/results/serving.json``."""
    results = run(quick="--quick" in sys.argv)
    print(f"raw ORT: {results['raw_ort']}")
    print(
        f"{'server':<10} {'load':<20} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'rows/s':>10} err"
    )
    servers = ["flywheel", "flywheel_native", "minimal", "grpc_floor", "mlserver", "mlserver_rest"]
    servers += [f"mlserver_tuned_w{w}" for w in MLSERVER_WORKERS] + ["kserve", "triton"]
    for server in servers:
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
