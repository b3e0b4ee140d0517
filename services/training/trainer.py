"""One training run, start to finish: data, search, fit, evaluate, export, parity, register.

Everything here is synchronous CPU work with no transport: the service runs
:func:`train` in a worker thread, the benchmark and ``flywheel reproduce`` call the
same functions directly.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from shared.contract import Contract
from shared.datasets import DatasetCatalog
from shared.events import utcnow
from shared.features import build_pipeline, onnx_feeds, onnx_input_names
from shared.float32_exact import make_float32_exact
from shared.registry import ModelManifest, Parity, Registry, TamperedArtifactError

from . import evaluation, fast_first
from .ahead import Ahead, Superseded
from .card import model_card
from .cpu import BACKGROUND_NICE, cpu_threads
from .data import Split, corrupt_labels, split
from .deploy import planned_action
from .estimators import LINEAR, describe, make_estimator
from .export import export
from .fast_first import FAST_FIRST, SEARCH, Candidate
from .gates import all_passed, evaluate_gates
from .parity import check_parity
from .runtime import onnx_predictions, predictor
from .search import AnyOf, Run, RunCancelled, SearchResult, StopSignal, check_cancel, search

PHASES = ("search", "finish_wait", "fit", "export", "parity", "evaluate")
"""A run's timed phases. ``fit``, ``export``, ``parity`` and ``evaluate`` are the work
of finishing the winner (on a second thread during the search when finishing ahead);
``finish_wait`` is the wall time from the end of the search until it was finished."""


class TrainingFailed(RuntimeError):
    """A run raised: ``phase`` says where (prepare, a timed phase, or register).

    Args:
        phase: the phase that was going.
        error: the exception it raised.
    """

    def __init__(self, phase: str, error: BaseException):
        super().__init__(f"{phase}: {error!r}")
        self.phase = phase
        self.error = error


BASELINE_PARAMS: dict[str, Any] = {"C": 1.0}


@dataclass(frozen=True)
class TrainConfig:
    """Service-side knobs of a run; recorded in the manifest so a reproduction matches."""

    search_budget_s: float | None = None
    max_train_rows: int | None = None
    cv_folds: int = 3
    importance_rows: int = 5000
    importance_repeats: int = 3
    min_group_rows: int = 50
    corrupt_label_share: float = 0.0
    finish_ahead: bool = True
    """Finish the search's leader on a second thread during the search (:mod:`.ahead`)."""
    background_nice: int = BACKGROUND_NICE
    """How much lower that thread's CPU priority is (:data:`.cpu.BACKGROUND_NICE`)."""

    def budget(self, contract: Contract) -> float:
        """The search budget: the contract's, capped by the service's."""
        budget = contract.training.search_time_budget_s
        return min(budget, self.search_budget_s) if self.search_budget_s else budget

    def as_record(self) -> dict[str, Any]:
        """The JSON form kept in the manifest."""
        return asdict(self)


@dataclass
class Phases:
    """Wall time of each phase of a run."""

    seconds: dict[str, float] = field(default_factory=dict)
    current: str = "prepare"
    """The phase going now (named in a failure)."""

    @contextmanager
    def time(self, phase: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to ``phase``."""
        self.current = phase
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add({phase: time.perf_counter() - started})

    def add(self, seconds: dict[str, float]) -> None:
        """Add wall times measured elsewhere (another thread's phases) to these."""
        for phase, spent in seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + spent


@contextmanager
def _named_failures(phases: Phases) -> Iterator[None]:
    """Raise any error of the ``with`` body as :class:`TrainingFailed` naming the phase
    that was going (a cancel, a superseded job or a named failure pass as they are)."""
    try:
        yield
    except (RunCancelled, Superseded, TrainingFailed):
        raise
    except Exception as exc:
        raise TrainingFailed(phases.current, exc) from exc


@dataclass
class Finished:
    """A candidate fitted on every training row, exported, parity-checked and evaluated
    on the holdout: all of a run that does not depend on the champion."""

    onnx: bytes
    parity: Parity
    evaluated: dict[str, Any]
    """Metrics, group metrics, trivial and interpretable baselines, importance."""
    seconds: dict[str, float]
    """Wall time of each step (fit, export, parity, evaluate)."""


@dataclass
class Prepared:
    """A dataset version split and ready to fit."""

    data: Split
    y_train: np.ndarray
    """Training labels actually used (after the corrupt-label test hook, if set)."""
    corrupted: int
    rows: int


def code_version() -> str:
    """The git commit of the code (``git:<sha>``), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        if sha:
            return f"git:{sha}"
    except (OSError, subprocess.SubprocessError):
        pass  # not a checkout (an installed package): fall back to its version
    try:
        return f"flywheel=={importlib.metadata.version('flywheel')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def contract_snapshot(contract: Contract) -> dict[str, Any]:
    """The contract as JSON, kept with each version (``parse_contract`` reads it back)."""
    return contract.model_dump(mode="json")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the model's numbers."""
    out = {}
    for name in ("scikit-learn", "skl2onnx", "onnxruntime", "onnx", "numpy", "pandas", "pyarrow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def prepare(
    contract: Contract, catalog: DatasetCatalog, dataset_version: str, config: TrainConfig
) -> Prepared:
    """Load a dataset version and split it as the run (or its reproduction) does."""
    version = catalog.get(contract.name, dataset_version)
    table = catalog.load_table(version)
    data = split(
        contract,
        table,
        holdout_fraction=contract.training.holdout_fraction,
        max_train_rows=config.max_train_rows,
    )
    y_train, corrupted = corrupt_labels(
        contract, data.y_train, config.corrupt_label_share, contract.training.seed
    )
    return Prepared(data, y_train, corrupted, table.num_rows)


def fit(
    contract: Contract, family: str, params: dict[str, Any], seed: int, prepared: Prepared
) -> Pipeline:
    """Fit the contract's pipeline with one estimator on the training rows, its constants
    then made exact in float32 (:mod:`shared.float32_exact`: what the ONNX export computes)."""
    pipeline = build_pipeline(contract, make_estimator(contract.task, family, params, seed))
    pipeline.fit(prepared.data.x_train, prepared.y_train)
    make_float32_exact(pipeline)
    return pipeline


@dataclass
class TrainResult:
    """What a run produced: the registered manifest and how long each phase took."""

    manifest: ModelManifest
    phases: dict[str, float]
    passed: bool


def train(
    contract: Contract,
    registry: Registry,
    catalog: DatasetCatalog,
    *,
    dataset_version: str,
    reason: str,
    config: TrainConfig,
    on_phase: Callable[[str, float], None] | None = None,
    threads: int | None = None,
    cancel: StopSignal | None = None,
    candidate: Candidate = SEARCH,
    fast_first_version: int | None = None,
    handoff: fast_first.Handoff | None = None,
    executor: Executor | None = None,
) -> TrainResult:
    """Train, evaluate, export and register one model version.

    Args:
        contract: the model's data contract.
        registry: the model registry (this function registers the new version).
        catalog: where the dataset version is read from.
        dataset_version: the dataset version to train on.
        reason: why this run happens (kept in the manifest).
        config: the service-side knobs.
        on_phase: called with (phase, seconds) as each phase ends (metrics).
        threads: OpenMP/BLAS threads for this run (None: the libraries' default).
        cancel: when set, the run stops with :class:`RunCancelled` at the next step
            (between search candidates and between phases), before anything is registered.
        candidate: ``search`` (the time-boxed search's winner) or ``fast_first`` (the
            cheap first candidate of :mod:`.fast_first`: no search, a lean evaluation,
            the same holdout and gates).
        fast_first_version: the fast candidate registered before this searched model
            in the same run, if any (recorded in its run record and manifest).
        handoff: the fast candidate training beside this searched run: the search
            starts at once, and the champion comparison and registration wait for the
            fast candidate's outcome (its version replaces ``fast_first_version``).
        executor: where the search cross-validates its candidates (the service's search
            process, :func:`.cpu.search_process`); None: in this thread.

    Raises :class:`TrainingFailed` (naming the phase) when any step raises.
    """
    phases = Phases()
    if handoff is not None:
        cancel = AnyOf(cancel, handoff.abandoned)  # the fast candidate failed: stop too
    with cpu_threads(threads), _named_failures(phases):
        return _train(
            contract,
            registry,
            catalog,
            dataset_version,
            reason,
            config,
            on_phase,
            cancel,
            phases,
            candidate,
            fast_first_version,
            threads,
            handoff,
            executor,
        )


def _train(
    contract: Contract,
    registry: Registry,
    catalog: DatasetCatalog,
    dataset_version: str,
    reason: str,
    config: TrainConfig,
    on_phase: Callable[[str, float], None] | None,
    cancel: StopSignal | None,
    phases: Phases,
    candidate: Candidate,
    fast_first_version: int | None,
    threads: int | None,
    handoff: fast_first.Handoff | None,
    executor: Executor | None,
) -> TrainResult:
    started = time.perf_counter()
    seed = contract.training.seed
    model = contract.name
    fast = candidate == FAST_FIRST
    if fast:
        config = fast_first.config_for(config)
    prepared = prepare(contract, catalog, dataset_version, config)
    data = prepared.data

    def timed(phase: str) -> Any:
        return phases.time(phase)

    if fast:
        finished = finish(
            contract,
            config,
            prepared,
            fast_first.FAMILY,
            fast_first.params(),
            None,
            lambda: check_cancel(cancel),
        )
        found = _unsearched(contract, finished.seconds["fit"], len(prepared.y_train))
    else:
        found, finished = _search_and_finish(
            contract, config, prepared, phases, threads, cancel, handoff, executor
        )
    best = found.best
    phases.add(finished.seconds)
    if handoff is not None:
        # The fast candidate trained beside the search: it is the champion to beat (if it
        # passed its gates) and the version before this one once it is registered.
        fast_first_version = handoff.wait(cancel)
    check_cancel(cancel)
    onnx, parity = finished.onnx, finished.parity
    with timed("evaluate"):
        champion = _champion(contract, registry, config, prepared)
    evaluated = {**finished.evaluated, "champion": champion}
    if on_phase is not None:
        for name, seconds in phases.seconds.items():
            on_phase(name, seconds)
    phases.current = "register"
    onnx_sha, onnx_uri = registry.put_onnx(model, onnx)

    gates = evaluate_gates(
        contract,
        parity=parity,
        metrics=evaluated["metrics"],
        group_metrics=evaluated["group_metrics"],
        baseline_metrics=evaluated["trivial_baseline"]["metrics"],
        champion_metrics=evaluated["champion"]["metrics"] if evaluated["champion"] else None,
        champion_group_metrics=(
            evaluated["champion"]["group_metrics"] if evaluated["champion"] else None
        ),
    )
    passed = all_passed(gates)
    has_champion = registry.aliases(model)["champion"] is not None
    action = planned_action(contract, passed=passed, has_champion=has_champion)
    version = registry.next_version(model)
    run_id = f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    lineage: dict[str, Any] = {"candidate": candidate}
    if fast:
        lineage["candidate_reason"] = fast_first.why(config.budget(contract), len(prepared.y_train))
    if fast_first_version is not None:
        lineage["fast_first_version"] = fast_first_version
    runs_uri = registry.put_run(
        model,
        run_id,
        {
            "run_id": run_id,
            "status": "completed",
            "model": model,
            "version": version,
            "dataset_version": dataset_version,
            "reason": reason,
            "metric": found.metric,
            "budget_s": found.budget_s,
            "budget_exhausted": found.exhausted,
            "not_run": found.not_run,
            "cv_folds": 0 if fast else config.cv_folds,
            "seed": seed,
            "search_rows": found.rows,
            "search_max_rows": found.max_rows,
            "search_sample": found.sample,
            "search_folds": found.cv,
            "refit_rows": len(prepared.y_train),
            "chosen": best.as_record()["name"],
            "candidates": [r.as_record() for r in found.runs],
            **lineage,
            "created": utcnow().isoformat(),
        },
    )
    metric = contract.promotion.primary_metric
    contract_sha, contract_uri = registry.put_contract(model, contract_snapshot(contract))
    manifest = ModelManifest(
        model=model,
        version=version,
        task=contract.task,
        dataset_version=dataset_version,
        code_version=code_version(),
        estimator=best.family,
        params=best.params,
        seed=seed,
        library_versions=library_versions(),
        features=contract.feature_names,
        onnx_inputs=onnx_input_names(contract),
        classes=list(contract.label.classes) if contract.label.classes else None,
        # The ONNX probabilities' columns (serving reads them; see .export).
        probability_columns=list(contract.label.classes) if contract.label.classes else None,
        metrics=evaluated["metrics"],
        group_metrics=evaluated["group_metrics"],
        parity=parity,
        onnx_uri=onnx_uri,
        onnx_sha256=onnx_sha,
        training_time_s=round(time.perf_counter() - started, 3),
        reason=reason,
        gates=gates,
        contract_sha256=contract_sha,
        contract_uri=contract_uri,
        # Fields beyond the shared schema (the manifest allows extras): the model card.
        primary_metric=metric,
        deployment=action,
        strategy=contract.promotion.strategy,
        dataset_rows=prepared.rows,
        training_config=config.as_record(),
        corrupted_labels=prepared.corrupted,
        holdout=data.holdout,
        phase_seconds={k: round(v, 4) for k, v in phases.seconds.items()},
        run_id=run_id,
        runs_uri=runs_uri,
        runs_tried=len(found.runs),
        search={
            "budget_s": found.budget_s,
            "seconds": round(phases.seconds.get("search", 0.0), 3),
            "cv_folds": 0 if fast else config.cv_folds,
            "not_run": found.not_run,
            "rows": found.rows,
            "max_rows": found.max_rows,
            "sample": found.sample,
            "folds": found.cv,
        },
        runs=[
            {"name": r.as_record()["name"], "cv_mean": r.cv_mean, "status": r.status}
            for r in found.runs
        ],
        chosen=describe(best.family, best.params),
        cv_score={
            "metric": found.metric,
            "mean": None if fast else best.cv_mean,
            "std": None if fast else best.cv_std,
        },
        fairness_gap=evaluation.fairness_gap(evaluated["group_metrics"]),
        feature_importance=evaluated["feature_importance"],
        trivial_baseline=evaluated["trivial_baseline"],
        interpretable_baseline=evaluated["interpretable_baseline"],
        champion=evaluated["champion"],
        **lineage,
        card=[],
    )
    manifest = manifest.model_copy(update={"card": model_card(contract, manifest)})
    registry.register(manifest)
    return TrainResult(manifest, dict(phases.seconds), passed)


def _unsearched(contract: Contract, seconds: float, rows: int) -> SearchResult:
    """The fast candidate as a one-row "search" record: fitted, never cross-validated."""
    params = fast_first.params()
    run = Run(
        fast_first.FAMILY,
        params,
        [],
        float("nan"),
        float("nan"),
        seconds,
        note=f"fast first candidate: fit on {rows} training rows, not cross-validated",
    )
    return SearchResult([run], run, contract.promotion.primary_metric, 0.0, False)


def finish(
    contract: Contract,
    config: TrainConfig,
    prepared: Prepared,
    family: str,
    params: dict[str, Any],
    baseline: Pipeline | None,
    check: Callable[[], None],
    spare: Callable[[], Executor | None] = lambda: None,
) -> Finished:
    """Fit a candidate on every training row, export it, check parity and evaluate it on
    the holdout: a run's work that does not depend on the champion.

    Args:
        baseline: the fitted interpretable baseline; None (the fast candidate) gives a
            lean evaluation: no interpretable baseline and no permutation importance,
            neither being a gate.
        check: called between steps; raises to abandon the work (cancel, superseded).
        spare: an idle worker process, if there is one when the evaluation starts (the
            search's, once the search is over): the permutation importance runs there
            while this thread does the rest of the evaluation.
    """
    phases = Phases()
    with _named_failures(phases):
        return _finish(contract, config, prepared, family, params, baseline, check, spare, phases)


def _finish(
    contract: Contract,
    config: TrainConfig,
    prepared: Prepared,
    family: str,
    params: dict[str, Any],
    baseline: Pipeline | None,
    check: Callable[[], None],
    spare: Callable[[], Executor | None],
    phases: Phases,
) -> Finished:
    seed = contract.training.seed
    data = prepared.data
    with phases.time("fit"):
        same_as_baseline = family == LINEAR and params == BASELINE_PARAMS
        if baseline is not None and same_as_baseline:
            pipeline = baseline
        else:
            pipeline = fit(contract, family, params, seed, prepared)
    check()
    with phases.time("export"):
        onnx = export(pipeline, contract)
    check()
    with phases.time("parity"):
        policy = contract.promotion
        parity, served = check_parity(
            contract, pipeline, onnx, data.x_holdout, policy.parity_atol, policy.parity_rtol
        )
    check()
    with phases.time("evaluate"):
        evaluated = _evaluate(contract, config, prepared, served, onnx, baseline, check, spare())
    return Finished(onnx, parity, evaluated, dict(phases.seconds))


def _search_and_finish(
    contract: Contract,
    config: TrainConfig,
    prepared: Prepared,
    phases: Phases,
    threads: int | None,
    cancel: StopSignal | None,
    handoff: fast_first.Handoff | None,
    executor: Executor | None,
) -> tuple[SearchResult, Finished]:
    """The time-boxed search and the finishing of its winner: on a second thread while
    the search goes on (:mod:`.ahead`), or after it when ``config.finish_ahead`` is off."""
    seed = contract.training.seed
    data = prepared.data

    fitting = Phases()  # the baseline's fit, counted in the run's "fit" phase

    def fit_baseline() -> Pipeline:
        with fitting.time("fit"):
            return fit(contract, LINEAR, BASELINE_PARAMS, seed, prepared)

    searched = threading.Event()  # the search is over: its worker process is idle

    def finish_one(
        family: str, params: dict[str, Any], baseline: Pipeline, check: Callable[[], None]
    ) -> Finished:
        def spare() -> Executor | None:
            return executor if searched.is_set() else None

        return finish(contract, config, prepared, family, params, baseline, check, spare)

    ahead: Ahead[Finished] | None = None
    if config.finish_ahead:
        ahead = Ahead(
            finish_one,
            fit_baseline,
            start=None if handoff is None else lambda: handoff.wait_done(cancel),
            in_threads=lambda job: _in_threads(threads, job),
            cancel=cancel,
            nice=config.background_nice,
        )
    try:
        with phases.time("search"):
            found = search(
                contract,
                data.x_train,
                prepared.y_train,
                budget_s=config.budget(contract),
                folds=config.cv_folds,
                seed=seed,
                max_rows=contract.training.search_max_rows,
                times=data.t_train,
                cancel=cancel,
                on_leader=None if ahead is None else ahead.lead,
                executor=executor,
                threads=threads,
            )
        searched.set()
        best = found.best
        if ahead is not None:
            with phases.time("finish_wait"):
                finished = ahead.result(best.family, best.params)
        else:
            finished = finish_one(
                best.family, best.params, fit_baseline(), lambda: check_cancel(cancel)
            )
        phases.add(fitting.seconds)
    finally:
        if ahead is not None:
            ahead.close()
    return found, finished


def _in_threads(threads: int | None, job: Callable[[], Any]) -> Any:
    with cpu_threads(threads):
        return job()


def _evaluate(
    contract: Contract,
    config: TrainConfig,
    prepared: Prepared,
    served: evaluation.Predictions,
    onnx: bytes,
    baseline: Pipeline | None,
    check: Callable[[], None],
    spare: Executor | None = None,
) -> dict[str, Any]:
    """The holdout evaluation that does not depend on the champion; without ``baseline``
    (the fast candidate) a lean one: no interpretable baseline and no permutation
    importance, neither being a gate.

    The metrics are those of the export's predictions (``served``, from the parity
    gate): what serving will answer, scored as the champion's are."""
    data = prepared.data
    x, y = data.x_holdout, data.y_holdout
    rows = config.importance_rows
    ranking: Future[list[dict[str, Any]]] | None = None
    if baseline is not None:
        feeds, latest = onnx_feeds(contract, x.iloc[-rows:]), y[-rows:]
        names = local = contract.feature_names
        if spare is not None:
            # Half the features ranked in the idle process, half here after the rest.
            local = names[len(names) // 2 :]
            ranking = spare.submit(
                _rank,
                contract,
                onnx,
                feeds,
                latest,
                config.importance_repeats,
                names[: len(names) // 2],
            )
    ours = evaluation.labels_like(contract, y, served)
    trivial = evaluation.trivial_predictions(contract, prepared.y_train, len(y))
    out: dict[str, Any] = {
        "metrics": evaluation.metrics(contract, y, ours),
        "group_metrics": _groups(contract, config, prepared, ours),
        "trivial_baseline": {
            "description": "the training prior for every row"
            if contract.task == "classification"
            else "the training mean for every row",
            "metrics": evaluation.metrics(contract, y, trivial),
        },
        "interpretable_baseline": None,
        "feature_importance": [],
    }
    if baseline is not None:
        interpretable = evaluation.sklearn_predictions(contract, baseline, x)
        out["interpretable_baseline"] = {
            "estimator": LINEAR,
            "params": BASELINE_PARAMS,
            "metrics": evaluation.metrics(contract, y, interpretable),
            **evaluation.coefficients(baseline),
        }
        check()
        found = _rank(contract, onnx, feeds, latest, config.importance_repeats, local, check)
        if ranking is not None:
            found += ranking.result()
        out["feature_importance"] = evaluation.ranked(found)
    return out


def _rank(
    contract: Contract,
    onnx: bytes,
    feeds: evaluation.Feeds,
    y: np.ndarray,
    repeats: int,
    features: list[str],
    check: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """:func:`evaluation.importance` of some features of an exported model (here, or in
    a worker process)."""
    return evaluation.importance(
        contract,
        predictor(contract, onnx),
        feeds,
        y,
        repeats=repeats,
        seed=contract.training.seed,
        check=check,
        features=features,
    )


def _groups(
    contract: Contract, config: TrainConfig, prepared: Prepared, pred: evaluation.Predictions
) -> dict[str, Any]:
    data = prepared.data
    return evaluation.group_metrics(
        contract, data.x_holdout, data.y_holdout, pred, min_rows=config.min_group_rows
    )


def _champion(
    contract: Contract, registry: Registry, config: TrainConfig, prepared: Prepared
) -> dict[str, Any] | None:
    """The champion's holdout metrics (None without a champion)."""
    champion = registry.champion(contract.name)
    if champion is None:
        return None
    x, y = prepared.data.x_holdout, prepared.data.y_holdout
    try:
        theirs = evaluation.labels_like(
            contract, y, onnx_predictions(contract, registry.onnx_bytes(champion), x)
        )
    except TamperedArtifactError as err:
        # A champion that cannot be verified cannot be compared against: refuse the
        # comparison loudly rather than promote blindly over it.
        return {
            "version": champion.version,
            "metrics": {},
            "group_metrics": {},
            "error": str(err),
        }
    return {
        "version": champion.version,
        "metrics": evaluation.metrics(contract, y, theirs),
        "group_metrics": _groups(contract, config, prepared, theirs),
    }
