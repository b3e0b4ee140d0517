"""The data plane: transport-free inference logic every adapter delegates to.

``infer`` routes a request (pinned version, canary share, champion + shadow), turns its
tensors into ONNX feeds, runs the model (directly or through the adaptive batcher),
assigns prediction ids, hands the answered rows to the prediction publisher and builds
the response. Nothing here knows gRPC or Kafka.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .encoding import Answered
from .errors import invalid, not_found
from .events import PredictionPublisher
from .inputs import TensorSpec
from .metrics import ServingMetrics
from .model import PREDICTION_ID, output_specs
from .repository import ModelRepository
from .statistics import Statistics
from .tensors import PredictionIds
from .types import InferRequest, InferResponse, OutputTensor

SERVER_VERSION = "0.1.0"
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository_metadata",
    "flywheel_prediction_events",
)
"""What ServerMetadata lists: Triton's names for the Triton extensions implemented
(REST binary tensors, ModelConfig, ModelStatistics), then Flywheel's own."""
PLATFORM = "onnxruntime_onnx"


class DataPlane:
    """Answers inference and metadata requests.

    Args:
        repository: the loaded models.
        publisher: where answered rows go (prediction events).
        metrics: the service's metrics.
        server_name: the name ServerMetadata reports.
    """

    def __init__(
        self,
        repository: ModelRepository,
        publisher: PredictionPublisher,
        metrics: ServingMetrics,
        server_name: str = "flywheel",
    ):
        self.repository = repository
        self.publisher = publisher
        self.metrics = metrics
        self.server_name = server_name
        self.outputs = {
            name: {s.name: s for s in output_specs(c)} for name, c in repository.contracts.items()
        }
        self._ready = False
        self.statistics = Statistics()
        """Triton-style per-version statistics (ModelStatistics)."""

    # --- health and metadata -----------------------------------------------------------

    def ready(self) -> bool:
        """Whether the server takes new requests: true once the registry's models are loaded
        and warm and the servers listen, false again from the start of a drain."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        """Turn readiness on (every server listening) or off (draining)."""
        self._ready = ready

    def model_ready(self, name: str, version: str) -> bool:
        """Whether ``name`` (at ``version``, or its champion) can answer now (false while the
        server is not ready)."""
        return self._ready and self._loaded(name, version)

    def failed(self, name: str, version: str, code: str, elapsed_s: float = 0.0) -> None:
        """Count a refused inference request (any transport) that took ``elapsed_s``. Only
        known models and loaded versions become label values: clients cannot grow the
        series."""
        loaded = self._loaded(name, version)
        self.metrics.failed(self.repository.label(name), version if loaded else "", code)
        slot = self.repository.slots.get(name)
        served = None if slot is None else (slot.find(version) if version else slot.champion)
        if served is not None:
            self.statistics.failed(name, served.model.version_str, elapsed_s)

    def _loaded(self, name: str, version: str) -> bool:
        slot = self.repository.slots.get(name)
        if slot is None:
            return False
        if version:
            return slot.find(version) is not None
        return slot.champion is not None

    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        """(name, version, extensions)."""
        return self.server_name, SERVER_VERSION, EXTENSIONS

    def model_metadata(
        self, name: str, version: str
    ) -> tuple[list[str], list[TensorSpec], list[TensorSpec], dict[str, str]]:
        """(versions, inputs, outputs, parameters) of a model; NOT_FOUND when unknown.

        A model whose contract is known but that has no version loaded yet still
        describes its inputs and outputs (with no versions)."""
        slot = self.repository.slots.get(name)
        if slot is None:
            raise not_found(
                f"model {name!r} is unknown; served models: {sorted(self.repository.slots)}"
            )
        served = slot.find(version) if version else slot.champion
        if version and served is None:
            raise not_found(f"model {name!r} version {version!r} is not loaded")
        contract = self.repository.contracts[name]
        params = {
            "task": contract.task,
            "input_styles": (
                "one tensor per feature (the inputs listed), or one FP32/FP64 tensor 'input' "
                "[N, F] in contract order (parameter matrix_input)"
            ),
            "max_batch_size": str(self.repository.max_batch_size),
        }
        spec = self.repository.specs[name]
        if spec.matrix_input is not None:
            params["matrix_input"] = spec.matrix_input
        if served is not None:
            params["model_version"] = served.model.version_str
            params["data_version"] = served.model.data_version
        for s in slot.versions():
            params[f"role.{s.model.version_str}"] = slot.role_of(s)
        if slot.mode == "canary":
            params["canary_percent"] = str(slot.canary_percent)
        if contract.description:
            params["description"] = contract.description
        versions = [s.model.version_str for s in slot.versions()]
        return versions, spec.tensors, list(self.outputs[name].values()), params

    # --- inference ---------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Answer one inference request (raises :class:`ServingError` on bad input)."""
        start = time.perf_counter()
        prefix = os.urandom(8).hex()
        request_id = request.id or prefix
        served, role, shadow = self.repository.route(
            request.model_name, request.model_version, request_id
        )
        model = served.model
        available = self.outputs[model.name]
        for name in request.outputs:
            if name not in available:
                raise invalid(f"output {name!r}: unknown; available: {list(available)}")
        feeds, rows = model.spec.feeds(request.inputs)
        fed = time.perf_counter()
        if served.batcher is not None:
            results = await served.batcher.predict(feeds, rows)
        else:
            results = model.predict(feeds)
            self.metrics.batched(model.name, rows)
        elapsed = time.perf_counter() - start
        predicted = start + elapsed
        # Waits only when the event buffer is full (Kafka behind), for a bounded time.
        await self.publisher.submit(
            Answered(
                model,
                role,
                request_id,
                prefix,
                feeds,
                results,
                rows,
                shadow.model if shadow is not None else None,
                elapsed * 1000.0,
                time.time(),
            )
        )
        submitted = time.perf_counter()
        outputs: list[OutputTensor] = []
        wanted = request.outputs or list(available)
        for name in wanted:
            spec = available[name]
            if name == PREDICTION_ID:
                outputs.append(OutputTensor(name, "BYTES", (rows,), PredictionIds(prefix, rows)))
                continue
            values = results[name]
            if spec.datatype == "BYTES":
                outputs.append(
                    OutputTensor(name, "BYTES", values.shape, [str(v).encode() for v in values])
                )
            else:
                outputs.append(
                    OutputTensor(name, spec.datatype, values.shape, _typed(values, spec))
                )
        self.metrics.served(model.name, model.version_str, elapsed)
        done = time.perf_counter()
        self.statistics.succeeded(
            model.name,
            model.version_str,
            rows,
            done - start,
            fed - start,
            predicted - fed,
            done - submitted,
        )
        parameters: dict[str, str] = {
            "model_version": model.version_str,
            "data_version": model.data_version,
            "role": role,
        }
        return InferResponse(
            model.name, model.version_str, request.id, parameters, outputs, request.raw
        )


def _typed(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    dtype = np.int64 if spec.datatype == "INT64" else np.float32
    return values if values.dtype == dtype else values.astype(dtype)
