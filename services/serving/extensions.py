"""Triton's extensions as transport-free documents: model configuration, statistics and
the repository index, in the JSON form Triton's REST API answers and its gRPC messages
parse from (one derivation for both protocols).

The configuration is derived from the contract and the loaded version: inputs and outputs
as ModelMetadata describes them (dims without the batch dimension, as Triton does when
``max_batch_size`` > 0), ``max_batch_size``, and ``dynamic_batching`` when the adaptive
batcher is on. Repository load and unload are not offered: deployments go through the
signed ``models.deployments`` path (``flywheel promote``).
"""

from __future__ import annotations

from typing import Any

from .dataplane import PLATFORM, DataPlane
from .errors import not_found
from .inputs import TensorSpec
from .statistics import Duration

REPOSITORY_CHANGES = (
    "models are loaded and unloaded by signed deployments only: use `flywheel promote` "
    "(or `flywheel rollback`), which publishes one on models.deployments"
)
"""The message of RepositoryModelLoad / RepositoryModelUnload (UNIMPLEMENTED)."""

_STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _tensor(spec: TensorSpec, *, output: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": spec.name,
        "data_type": "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}",
        "dims": list(spec.shape[1:]),
    }
    if not output and spec.parameters.get("nullable") == "true":
        doc["optional"] = True  # a nullable feature's tensor may be left out (all null)
    return doc


def model_config(dataplane: DataPlane, name: str, version: str) -> dict[str, Any]:
    """Triton's ``ModelConfig`` of ``name`` (at ``version``, or its champion)."""
    versions, inputs, outputs, params = dataplane.model_metadata(name, version)
    repository = dataplane.repository
    config: dict[str, Any] = {
        "name": name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [int(v) for v in versions]}},
        "max_batch_size": repository.max_batch_size,
        "input": [_tensor(s, output=False) for s in inputs],
        "output": [_tensor(s, output=True) for s in outputs],
        "parameters": {k: {"string_value": v} for k, v in params.items()},
    }
    if repository.batch_max_delay_s > 0:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(repository.batch_max_delay_s * 1e6)
        }
    return config


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def model_statistics(dataplane: DataPlane, name: str, version: str) -> list[dict[str, Any]]:
    """Triton's ``ModelStatistics`` entries: every loaded version of every model (``name``
    empty), of one model, or of one version."""
    slots = dataplane.repository.slots
    if name and name not in slots:
        raise not_found(f"model {name!r} is unknown; served models: {sorted(slots)}")
    out = []
    for model in [name] if name else sorted(slots):
        loaded = [s.model.version_str for s in slots[model].versions()]
        if version and version not in loaded:
            raise not_found(f"model {model!r} version {version!r} is not loaded")
        for v in [version] if version else loaded:
            stats = dataplane.statistics.of(model, v)
            out.append(
                {
                    "name": model,
                    "version": v,
                    "last_inference": stats.last_inference_ms,
                    "inference_count": stats.inference_count,
                    "execution_count": stats.execution_count,
                    "inference_stats": {k: _duration(getattr(stats, k)) for k in _STATS},
                }
            )
    return out


def repository_index(dataplane: DataPlane, ready_only: bool) -> list[dict[str, str]]:
    """Every contract with its state: each loaded version READY, a contract with no
    version loaded UNAVAILABLE (with the reason)."""
    out = []
    for name in sorted(dataplane.repository.contracts):
        slot = dataplane.repository.slots.get(name)
        served = slot.versions() if slot is not None else []
        for s in served:
            ready = dataplane.model_ready(name, s.model.version_str)
            if ready or not ready_only:
                out.append(
                    {
                        "name": name,
                        "version": s.model.version_str,
                        "state": "READY" if ready else "UNAVAILABLE",
                        "reason": "" if ready else "the server is not ready (starting or draining)",
                    }
                )
        if not served and not ready_only:
            out.append(
                {
                    "name": name,
                    "version": "",
                    "state": "UNAVAILABLE",
                    "reason": "no version deployed (no champion in the registry)",
                }
            )
    return out
