"""Finishing the search's leader ahead of the search's end (services/training/ahead.py)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest

from services.training.ahead import Ahead, Superseded
from services.training.cpu import search_process
from services.training.estimators import describe
from services.training.fast_first import Handoff
from services.training.search import AnyOf, RunCancelled


class Jobs:
    """Records what the worker did; a job can be held at its first step."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.abandoned: list[str] = []
        self.baselines = 0
        self.hold = threading.Event()
        self.hold.set()
        self.inside = threading.Event()
        self.gave_up = threading.Event()

    def baseline(self) -> str:
        self.baselines += 1
        return "baseline"

    def finish(self, family: str, params: dict[str, Any], baseline: str, check: Any) -> str:
        name = describe(family, params)
        self.started.append(name)
        self.inside.set()
        self.hold.wait()
        try:
            check()
        except Superseded:
            self.abandoned.append(name)
            self.gave_up.set()
            raise
        self.finished.append(name)
        return f"{name} with {baseline}"


def test_the_winner_is_finished_and_a_superseded_leader_is_abandoned() -> None:
    jobs = Jobs()
    jobs.hold.clear()
    ahead: Ahead[str] = Ahead(jobs.finish, jobs.baseline)
    ahead.lead("linear", {"C": 1.0})
    assert jobs.inside.wait(10)  # the first leader's job is running, held
    ahead.lead("boosting", {"n": 1})  # queued behind it
    ahead.lead("boosting", {"n": 2})  # the queued one is dropped before it starts
    jobs.hold.set()
    assert ahead.result("boosting", {"n": 2}) == "boosting(n=2) with baseline"
    ahead.close()
    assert jobs.abandoned == ["linear(C=1.0)"]  # stopped at its next step
    assert jobs.started == ["linear(C=1.0)", "boosting(n=2)"]
    assert jobs.finished == ["boosting(n=2)"]
    assert jobs.baselines == 1
    assert ahead.baseline() == "baseline"


def test_a_winner_never_led_or_once_abandoned_is_finished_when_asked() -> None:
    jobs = Jobs()
    ahead: Ahead[str] = Ahead(jobs.finish, jobs.baseline)
    assert ahead.result("linear", {"C": 0.1}) == "linear(C=0.1) with baseline"
    jobs.hold.clear()
    jobs.inside.clear()
    ahead.lead("boosting", {"n": 1})
    assert jobs.inside.wait(10)
    ahead.lead("linear", {"C": 10.0})
    jobs.hold.set()
    assert jobs.gave_up.wait(10)
    # boosting(n=1) was abandoned, then (a tie broken the other way) it wins after all.
    assert ahead.result("boosting", {"n": 1}) == "boosting(n=1) with baseline"
    ahead.close()
    assert jobs.abandoned[0] == "boosting(n=1)"
    assert jobs.finished[-1] == "boosting(n=1)"


def test_the_worker_waits_for_the_fast_candidate_and_errors_reach_the_caller() -> None:
    handoff = Handoff()
    jobs = Jobs()
    ahead: Ahead[str] = Ahead(jobs.finish, jobs.baseline, start=handoff.wait_done)
    ahead.lead("linear", {"C": 1.0})
    assert not jobs.inside.wait(0.3)  # a bounded check that nothing started, not a wait
    assert jobs.baselines == 0
    handoff.registered(1)
    assert ahead.result("linear", {"C": 1.0}) == "linear(C=1.0) with baseline"
    ahead.close()

    def broken(family: str, params: dict[str, Any], baseline: str, check: Any) -> str:
        raise ValueError("export failed")

    ahead = Ahead(broken, jobs.baseline)
    with pytest.raises(ValueError, match="export failed"):
        ahead.result("linear", {"C": 1.0})
    ahead.close()


def test_a_failed_fast_candidate_stops_the_searched_run() -> None:
    handoff, service = Handoff(), threading.Event()
    stop = AnyOf(service, handoff.abandoned)
    assert not stop.is_set()
    handoff.failed()
    assert stop.is_set()
    handoff.wait_done()  # returns: the outcome is known
    with pytest.raises(RunCancelled, match="fast first candidate failed"):
        handoff.wait(service)
    ok = Handoff()
    ok.registered(3)
    assert ok.wait(service) == 3
    service.set()
    with pytest.raises(RunCancelled):
        Handoff().wait(service)


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_background_work_runs_at_a_lower_priority() -> None:
    here = _niceness()
    seen: list[int] = []

    def finish(family: str, params: dict[str, Any], baseline: str, check: Any) -> str:
        seen.append(_niceness())
        return "done"

    ahead: Ahead[str] = Ahead(finish, lambda: "baseline", nice=5)
    assert ahead.result("linear", {"C": 1.0}) == "done"
    ahead.close()
    assert seen == [min(19, here + 5)]
    assert _niceness() == here  # the calling thread keeps its priority
    pool = search_process(nice=7)
    try:
        assert pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result() == min(19, here + 7)
    finally:
        pool.shutdown()
