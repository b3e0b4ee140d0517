"""Finishing the search's leader ahead of the search's end, on a second thread.

Everything a searched run does after choosing its model except the champion comparison
and the registration — the refit on every training row, the ONNX export, the parity
gate and the holdout evaluation — depends only on the chosen candidate. Those steps
used to start when the search ended (about 9 s after it on the census reference: refit
4.3 s with the interpretable baseline, evaluation 4.7 s). Here they run on a worker
thread for whichever candidate leads the search so far, while the search goes on with
the next candidates on the other core:

- the worker first waits for ``start`` (the fast first candidate of the same run, which
  must not lose its core), then fits the interpretable baseline, every run's reference;
- each time a new candidate takes the lead, its finishing is queued and a job for an
  earlier leader that has not started is dropped; one that is running stops at its next
  step (between phases, between two features' importance), its work discarded;
- when the search ends, the winner — its last leader — is either finished, being
  finished, or finished then.

The results are those of finishing the winner after the search: the same seeds, rows
and steps, in another thread. ``training.finish_ahead`` off (a one-core host) does
everything after the search, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from .cpu import lower_priority
from .estimators import describe
from .search import StopSignal, check_cancel

T = TypeVar("T")

Check = Callable[[], None]
"""Raises to stop a job between two steps (:class:`Superseded`, or ``RunCancelled``)."""


class Superseded(Exception):
    """Another candidate took the lead: this one's finishing was abandoned."""


class Ahead(Generic[T]):
    """A one-thread worker finishing the search's current leader.

    Args:
        finish: ``finish(family, params, baseline, check)`` finishes one candidate,
            calling ``check()`` between its steps.
        fit_baseline: fits the interpretable baseline (run once, before any finishing).
        start: blocks until the worker may start (None: at once).
        in_threads: wraps each job (the run's OpenMP/BLAS thread limit, which is per
            thread).
        cancel: the service's stop signal.
        nice: how much lower the worker thread's CPU priority is (:mod:`.cpu`).
    """

    def __init__(
        self,
        finish: Callable[[str, dict[str, Any], Any, Check], T],
        fit_baseline: Callable[[], Any],
        *,
        start: Callable[[], None] | None = None,
        in_threads: Callable[[Callable[[], Any]], Any] = lambda job: job(),
        cancel: StopSignal | None = None,
        nice: int = 0,
    ):
        self._finish = finish
        self._in_threads = in_threads
        self._cancel = cancel
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-ahead")
        self._lock = threading.Lock()
        self._leader: str | None = None
        self._jobs: dict[str, Future[T]] = {}
        self._pool.submit(lower_priority, nice)
        if start is not None:
            self._pool.submit(start)
        self._baseline: Future[Any] = self._pool.submit(in_threads, fit_baseline)

    def lead(self, family: str, params: dict[str, Any]) -> None:
        """``family`` with ``params`` leads the search: finish it next, drop the others."""
        key = describe(family, params)
        with self._lock:
            self._leader = key
            for other, queued in self._jobs.items():
                if other != key:
                    queued.cancel()  # not started: it never runs (a running one checks)
            job = self._jobs.get(key)
            if job is None or job.cancelled() or _superseded(job):
                self._jobs[key] = self._pool.submit(self._job, key, family, params)

    def result(self, family: str, params: dict[str, Any]) -> T:
        """The finished winner (waits for its job, queuing it if it was dropped)."""
        self.lead(family, params)
        with self._lock:
            job = self._jobs[describe(family, params)]
        return job.result()

    def baseline(self) -> Any:
        """The fitted interpretable baseline (waits for it)."""
        return self._baseline.result()

    def close(self) -> None:
        """Drop every queued job; a running one stops at its next step."""
        with self._lock:
            self._leader = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _job(self, key: str, family: str, params: dict[str, Any]) -> T:
        def check() -> None:
            check_cancel(self._cancel)
            if self._leader != key:
                raise Superseded(key)

        check()
        baseline = self._baseline.result()
        result: T = self._in_threads(lambda: self._finish(family, params, baseline, check))
        return result


def _superseded(job: Future[Any]) -> bool:
    return job.done() and not job.cancelled() and isinstance(job.exception(), Superseded)
