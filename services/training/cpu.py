"""Where a run's CPU work runs: thread limits, and the search's worker process.

A run does three CPU-heavy things at once on a model's first training: the fast first
candidate, the time-boxed search and the finishing of the search's leader
(:mod:`.ahead`). As threads of one process they take turns at the GIL: measured on
this 2-core machine, the fast candidate's fit took 1.6-2.1 s beside a search thread
instead of 0.8 s alone, with a core to spare. So the search's cross-validation — the
bulk of the work, its inputs and outputs small (a row sample of at most
``training.search_max_rows``, a score and the fold fits) — runs in a worker process of
its own, and the training process's threads keep its cores for the rest.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]


def cpu_threads(threads: int | None) -> AbstractContextManager[Any]:
    """Limit OpenMP/BLAS threads of the calling thread (None: the libraries' default).

    Measured on 2 shared cores: HistGradientBoosting's OpenMP threads spin-wait when
    other processes hold the cores, and a census run took 29 s instead of 8 s.
    """
    if threads is None:
        return nullcontext()
    return cast(AbstractContextManager[Any], threadpool_limits(limits=threads))


BACKGROUND_NICE = 10
"""How much lower the priority of the search's worker process and of the thread finishing
its leader is: they yield the CPU to serving and to the fast first candidate, and use
it fully when nothing else wants it."""


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux nice values are per
    thread; elsewhere this lowers the process's)."""
    if nice <= 0:
        return
    who = threading.get_native_id() if sys.platform == "linux" else 0
    os.setpriority(os.PRIO_PROCESS, who, min(19, os.getpriority(os.PRIO_PROCESS, who) + nice))


def search_process(nice: int = BACKGROUND_NICE) -> Executor:
    """A started, warm one-process pool for the search's cross-validation, its priority
    lowered by ``nice``.

    Blocks while the process starts and imports scikit-learn (about 2 s): call it off
    the event loop. ``spawn``, not ``fork``: the service process runs threads (the
    event loop's, Kafka's) that a forked child would inherit mid-lock.
    """
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=lower_priority,
        initargs=(nice,),
    )
    pool.submit(_warm).result()
    return pool


def _warm() -> bool:
    # Imported here, in the worker, so the first candidate does not pay for it.
    from . import search  # noqa: F401

    return True
