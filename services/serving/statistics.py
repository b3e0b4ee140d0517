"""Per model and version inference statistics, as Triton's ModelStatistics reports them.

Cumulative since start: success and failure counts, the time spent converting inputs to
ONNX feeds (``compute_input``), running the model (``compute_infer``, which includes any
wait in the adaptive batcher: ``queue`` stays 0, there is no queue before the model) and
building outputs (``compute_output``), rows answered and executions. Kept in plain
integers on the event loop (no lock: every update runs there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    """A count and a cumulative duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        """One more, lasting ``seconds``."""
        self.count += 1
        self.ns += int(seconds * 1e9)


@dataclass(slots=True)
class VersionStatistics:
    """The statistics of one loaded model version."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0


class Statistics:
    """Statistics of every (model, version) that answered or refused a request."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, str], VersionStatistics] = {}

    def of(self, model: str, version: str) -> VersionStatistics:
        """The statistics of ``model`` at ``version`` (zeros when it has none yet)."""
        return self._by.get((model, version)) or VersionStatistics()

    def _entry(self, model: str, version: str) -> VersionStatistics:
        entry = self._by.get((model, version))
        if entry is None:
            entry = self._by[(model, version)] = VersionStatistics()
        return entry

    def succeeded(
        self,
        model: str,
        version: str,
        rows: int,
        total_s: float,
        input_s: float,
        infer_s: float,
        output_s: float,
    ) -> None:
        """One answered request of ``rows`` rows and how long each phase took."""
        entry = self._entry(model, version)
        entry.success.add(total_s)
        entry.compute_input.add(input_s)
        entry.compute_infer.add(infer_s)
        entry.compute_output.add(output_s)
        entry.queue.count += 1
        entry.inference_count += rows
        entry.execution_count += 1
        entry.last_inference_ms = int(time.time() * 1000)

    def failed(self, model: str, version: str, seconds: float) -> None:
        """One refused request of a loaded version, refused after ``seconds``."""
        self._entry(model, version).fail.add(seconds)
