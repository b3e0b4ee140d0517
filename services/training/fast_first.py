"""The fast first candidate: a model answering within seconds while the search goes on.

A model with no champion has nothing serving. When its contract allows it
(``training.fast_first``), the run that trains it registers two versions on the same
dataset version, as one run for the same triggers:

1. the *fast first* candidate — the search's first gradient-boosting grid point
   (scikit-learn's defaults), not cross-validated, fit on the latest
   :data:`FAST_FIRST_ROWS` training rows and evaluated on the run's time-ordered holdout
   with the cheap parts of the evaluation (metrics, per-group metrics, trivial
   baseline; no permutation importance or interpretable baseline). It is exported,
   parity-checked, gated and deployed exactly like any version: the gates guard what
   serves, so none is skipped;
2. the searched model, its search started at the same time on the other thread (a
   :class:`Handoff` between the two), registered as the next version and gated against the fast
   candidate once that is the champion (``beats_champion``, ``group_regression``), then
   deployed by the contract's strategy.

Under the ``manual`` strategy both versions wait for ``flywheel approve`` and
``flywheel promote``; a fast candidate that fails a gate is registered and not
deployed, and the search still runs. The run's triggers are recorded as handled
after the searched version only, so a run cut short between the two (a restart)
trains the searched one: a fast candidate as the newest version still counts as "no
first model yet" for the retrain policy (:func:`is_fast_first`).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from shared.contract import Contract
from shared.registry import ModelManifest

from .estimators import BOOSTING, GRIDS
from .search import RunCancelled, StopSignal, check_cancel

if TYPE_CHECKING:
    from .trainer import TrainConfig

Candidate = Literal["search", "fast_first"]
SEARCH: Candidate = "search"
FAST_FIRST: Candidate = "fast_first"

FAST_FIRST_ROWS = 20_000
"""Training rows of the fast candidate (the latest ones). On the census reference
(55,028 training rows, 2 shared cores) boosting fit 0.65 s on 20,000 rows and 1.5 s on
all of them, for a holdout roc_auc of 0.904 and 0.907."""


FAMILY = BOOSTING
"""The fast candidate's estimator family."""


def params() -> dict[str, Any]:
    """The fast candidate's hyperparameters: the first boosting grid point."""
    return dict(GRIDS[BOOSTING][0])


def config_for(config: TrainConfig) -> TrainConfig:
    """``config`` (a :class:`~.trainer.TrainConfig`) with the fast candidate's row cap.

    Recorded in the candidate's manifest, so ``flywheel reproduce`` fits the same rows.
    """
    cap = config.max_train_rows
    return replace(config, max_train_rows=min(cap, FAST_FIRST_ROWS) if cap else FAST_FIRST_ROWS)


def is_fast_first(manifest: ModelManifest | None) -> bool:
    """True when ``manifest`` is a fast first candidate."""
    return manifest is not None and (manifest.model_extra or {}).get("candidate") == FAST_FIRST


def wanted(contract: Contract, *, has_champion: bool, last: ModelManifest | None) -> bool:
    """Whether a run should start with a fast candidate.

    Args:
        contract: the model's contract (``training.fast_first``).
        has_champion: the model has a champion (then the searched model is the answer).
        last: the newest registered version: a fast candidate already waiting for its
            search (a run cut short) is not registered twice.
    """
    return contract.training.fast_first and not has_champion and not is_fast_first(last)


def why(budget_s: float, rows: int) -> str:
    """The fast candidate's reason for being, for its run record and model card."""
    return (
        f"no champion yet, so a cheap candidate answers while the {budget_s:g} s search "
        f"runs (training.fast_first: the first boosting grid point, fit on the latest "
        f"{rows} training rows, not cross-validated)"
    )


class Handoff:
    """The fast candidate's outcome, handed to the searched run training beside it.

    The searched run's search starts with the fast candidate; its champion comparison
    and registration wait here until the fast candidate is registered and deployed (it
    is then the champion to beat, and the version before). Its finishing ahead
    (:mod:`.ahead`) waits too, so the fast candidate keeps its core.
    """

    WAIT_S = 0.1
    """How often a wait looks at the service's stop signal."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._version: int | None = None
        self.abandoned = threading.Event()
        """Set when the fast candidate failed: the searched run's stop signal too."""

    def registered(self, version: int) -> None:
        """The fast candidate is registered (and deployed, if its gates passed)."""
        self._version = version
        self._done.set()

    def failed(self) -> None:
        """The fast candidate failed: the searched run stops (the run is retried)."""
        self.abandoned.set()
        self._done.set()

    def wait_done(self, cancel: StopSignal | None = None) -> None:
        """Block until the fast candidate's outcome is known, whatever it is (or the
        service stops)."""
        while not self._done.wait(self.WAIT_S):
            if cancel is not None and cancel.is_set():
                return

    def wait(self, cancel: StopSignal | None) -> int:
        """The fast candidate's version, once registered.

        Raises:
            RunCancelled: the service stops, or the fast candidate failed.
        """
        while not self._done.wait(self.WAIT_S):
            check_cancel(cancel)
        if self._version is None:
            raise RunCancelled("the fast first candidate failed: the searched run stops")
        return self._version
