"""Training benchmark: where a run's wall time goes, next to a bare ``fit``.

One run on the census reference data (68,785 rows): the training service's own
``train`` function (the same code the service runs in its worker thread) with its
phases timed — search, fit, evaluate, export, parity — and then, in the same process
and on the same training rows, a bare ``fit`` of the chosen estimator inside the
contract's pipeline. The difference is what search, honest evaluation and the parity
gate cost on top of fitting a model.

``python -m bench.training [--quick]``; ``run(quick)`` returns the figures as a dict.
``--quick`` caps the training rows at 5,000 and the search at 3 s.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
MODEL = "census_employment"
DATA = ROOT / "var" / "data" / "employment_MA_reference.pq"
THREADS = 1
"""OpenMP/BLAS threads, as the training service's default (``FLYWHEEL_TRAINING_THREADS``)."""
RESULTS = ROOT / "bench" / "results" / "training.json"


def run(quick: bool = False) -> dict[str, Any]:
    """Train once on the census reference and time each phase and a bare fit."""
    from services.training.cpu import cpu_threads, search_process
    from services.training.trainer import TrainConfig, fit, prepare, train
    from shared.contract import load_contract
    from shared.datasets import BatchRef, DatasetCatalog, DatasetVersion
    from shared.registry import Registry
    from shared.store import ArtifactStore

    load_before = os.getloadavg()
    contract = load_contract(ROOT / "contracts" / f"{MODEL}.yaml")
    config = TrainConfig(max_train_rows=5000, search_budget_s=3.0) if quick else TrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(f"file://{tmp}")
        table = pq.read_table(DATA)
        sha, uri = store.put_parquet(f"datasets/{MODEL}/batches", table)
        ref = BatchRef(
            batch_id=sha, uri=uri, sha256=sha, rows=table.num_rows, raw_uri=uri, report_uri=uri
        )
        catalog = DatasetCatalog(store)
        version = catalog.add(DatasetVersion(dataset=MODEL, batches=[ref], rows=table.num_rows))
        registry = Registry(store)

        # As the service runs it: the search in its worker process, its leader finished
        # ahead on a second thread.
        pool = search_process()
        try:
            started = time.perf_counter()
            result = train(
                contract,
                registry,
                catalog,
                dataset_version=version.id,
                reason="benchmark",
                config=config,
                threads=THREADS,
                executor=pool,
            )
            total = time.perf_counter() - started
        finally:
            pool.shutdown()
        manifest = result.manifest

        load_started = time.perf_counter()
        prepared = prepare(contract, catalog, version.id, config)
        load_s = time.perf_counter() - load_started
        with cpu_threads(THREADS):
            fit_started = time.perf_counter()
            fit(contract, manifest.estimator, dict(manifest.params), manifest.seed, prepared)
            bare_fit_s = time.perf_counter() - fit_started

    extra = manifest.model_extra or {}
    phases = {k: round(v, 3) for k, v in result.phases.items()}
    return {
        "data": {
            "rows": table.num_rows,
            "train_rows": extra["holdout"]["train_rows"],
            "holdout_rows": extra["holdout"]["rows"],
        },
        "quick": quick,
        "cpus": os.cpu_count(),
        "threads": THREADS,
        # Other work on the machine slows every phase alike: the 1-minute load average
        # before and after says how busy it was.
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "search_budget_s": config.budget(contract),
        "candidates": extra["runs_tried"],
        # The search cross-validates on a capped sample (training.search_max_rows); the
        # chosen estimator is refit on every training row.
        "search_rows": extra["search"]["rows"],
        "search_max_rows": extra["search"]["max_rows"],
        "chosen": extra["chosen"],
        "primary_metric": {
            contract.promotion.primary_metric: manifest.metrics.get(
                contract.promotion.primary_metric
            )
        },
        "phases_s": phases,
        "phases_sum_s": round(sum(result.phases.values()), 3),
        "total_train_s": round(total, 3),
        "load_and_split_s": round(load_s, 3),
        "bare_fit_s": round(bare_fit_s, 3),
        "overhead_vs_bare_fit": round(total / bare_fit_s, 1) if bare_fit_s else None,
        "parity": manifest.parity.model_dump(),
    }


def main() -> None:
    """Print the figures and write them to ``bench/results/training.json``."""
    results = run(quick="--quick" in sys.argv)
    print(
        f"chosen: {results['chosen']} ({results['candidates']} candidates, "
        f"searched on {results['search_rows']} rows, refit on {results['data']['train_rows']})"
    )
    for phase, seconds in results["phases_s"].items():
        print(f"  {phase:<9} {seconds:8.2f} s")
    print(f"  {'total':<9} {results['total_train_s']:8.2f} s (train() wall time)")
    print(f"  bare fit  {results['bare_fit_s']:8.2f} s (chosen estimator, same rows)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
