"""``flywheel up``'s restart policy, with fake child processes and a fake clock."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from shared.cli import stack
from shared.cli.stack import NothingStarts, Supervisor
from tests.clock import Clock


class FakeProc:
    """What the supervisor reads of a child: exit code, readiness, its last error."""

    def __init__(self, name: str, crashes: bool):
        self.name = name
        self.crashes = crashes
        self.starts = 0
        self.returncode: int | None = None
        self.ready = False

    def start(self) -> None:
        self.starts += 1
        self.returncode = 1 if self.crashes else None
        self.ready = not self.crashes

    def terminate(self) -> int | None:
        self.returncode = self.returncode if self.returncode is not None else 0
        return self.returncode

    def last_error(self) -> str:
        return "settings.invalid: metrics_port" if self.crashes else ""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(stack.time, "monotonic", fake)
    return fake


def supervisor(tmp_path: Path, crashing: dict[str, bool]) -> Supervisor:
    sup = Supervisor(list(crashing), {}, tmp_path)
    sup.procs = {n: FakeProc(n, c) for n, c in crashing.items()}  # type: ignore[misc]
    for name in crashing:
        sup._start(name)
        if not crashing[name]:
            sup._became_ready(name)
    return sup


def test_a_failing_service_is_restarted_with_doubling_back_off_and_the_rest_untouched(
    tmp_path: Path, clock: Clock
) -> None:
    sup = supervisor(tmp_path, {"ingestion": False, "validation": True})
    starts = []
    for _ in range(40):  # 20 s of supervision in half-second passes
        sup.watch()
        starts.append(sup.procs["validation"].starts)  # type: ignore[attr-defined]
        clock.now += 0.5
    # restarted after 1 s, then 2 s, then 4 s, then 8 s
    first = [starts.index(n) for n in (2, 3, 4, 5)]
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert gaps == [4 + 1, 8 + 1, 16 + 1]  # passes: back-off / 0.5 s, plus the exit pass
    assert sup.procs["ingestion"].starts == 1  # type: ignore[attr-defined]
    assert sup.restarts["validation"] == 4
    assert sup.failures["validation"] == 5


def test_it_gives_up_only_when_no_service_has_ever_become_ready(
    tmp_path: Path, clock: Clock
) -> None:
    sup = supervisor(tmp_path, {"ingestion": True, "validation": True})

    def supervise() -> None:
        for _ in range(200):
            sup.watch()
            clock.now += 0.5

    with pytest.raises(NothingStarts, match=r"settings\.invalid"):
        supervise()
    assert all(n >= Supervisor.GIVE_UP_AFTER for n in sup.failures.values())

    kept = supervisor(tmp_path, {"ingestion": False, "validation": True})
    for _ in range(200):
        kept.watch()  # one healthy service: validation keeps being restarted, no give-up
        clock.now += 0.5
    assert kept.failures["validation"] >= Supervisor.GIVE_UP_AFTER
