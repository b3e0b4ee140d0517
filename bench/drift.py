"""Drift benchmark: Flywheel's binned drift per window vs Evidently's DataDriftPreset.

Data: a seeded synthetic table of 20 features (15 numeric, 5 categorical); a
reference of 100,000 rows and current windows of 10,000 and 100,000 rows in which 7
features drift (some strongly, some barely) and 13 do not.

Flywheel: the reference profile is built (``shared.drift.build_profile``, median of 3
builds); per window, each feature is counted and summed on the reference bins
(``StreamingHistogram``) and scored (PSI + binned KS + binned normed Wasserstein, or
PSI + JS + chi-square) — what monitoring does per window, in O(bins) memory; the timed
part includes every score. Verdicts, with the contract's default thresholds: PSI alone
(PSI > 0.2, the rule before the Wasserstein score), monitoring's (PSI > 0.2 or
Wasserstein >= 0.1) and validation's (``is_drifted``: PSI > 0.2 or KS > 0.1 or
Wasserstein >= 0.1 or JS > 0.1).

Evidently 0.7 runs in its own virtualenv (``bench/.venv-evidently``; never a project
dependency) through a subprocess that times ``Report([DataDriftPreset()]).run`` on the
same Parquet files; its per-column verdicts use its defaults for these sizes
(Wasserstein distance normed >= 0.1 for numeric, Jensen-Shannon >= 0.1 for
categorical). Reported: median time of 3 runs each, Flywheel both without and with the
profile build (Evidently's time always includes its reference processing, so the fair
speed-up is ``speedup_with_profile``; ``speedup`` is the per-window cost once monitoring
holds the profile), the per-feature verdict agreement with Evidently and with the truth
(``DRIFTED``).

``python -m bench.drift [--quick]``; ``run(quick)`` returns the figures as a dict.
``--quick`` uses a 20,000-row reference and one 10,000-row window.

Evidently is installed into ``bench/.venv-evidently`` on first use
(``evidently>=0.7,<0.8``, ``pandas>=2.2,<3``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench._venv import ensure_venv

ROOT = Path(__file__).resolve().parent.parent
EVIDENTLY_VENV = ROOT / "bench" / ".venv-evidently"
EVIDENTLY_PACKAGES = ["evidently>=0.7,<0.8", "pandas>=2.2,<3"]
RESULTS = ROOT / "bench" / "results" / "drift.json"
NUMERIC = [f"n{i:02d}" for i in range(15)]
CATEGORIES = [f"c{i}" for i in range(5)]
DRIFTED = {"n00", "n01", "n02", "n03", "n04", "c0", "c1"}
REPEATS = 3

EVIDENTLY_SCRIPT = r"""
import json, statistics, sys, time
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

ref_path, cur_path, numeric, categories, repeats = sys.argv[1:6]
numeric, categories = numeric.split(","), categories.split(",")
ref, cur = pd.read_parquet(ref_path), pd.read_parquet(cur_path)
definition = DataDefinition(numerical_columns=numeric, categorical_columns=categories)
times, verdicts, methods = [], {}, {}
for _ in range(int(repeats)):
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    result = snapshot.dict()
    times.append(time.perf_counter() - start)
for m in result["metrics"]:
    cfg = m.get("config", {})
    if cfg.get("type", "").endswith("ValueDrift"):
        method, threshold, value = cfg["method"], float(cfg["threshold"]), float(m["value"])
        p_value = "p_value" in method
        verdicts[cfg["column"]] = value < threshold if p_value else value >= threshold
        methods[cfg["column"]] = method
print(json.dumps({"seconds": statistics.median(times), "runs": times,
                  "drifted": verdicts, "methods": methods}))
"""


def make_data(rows: int, seed: int, drift: bool) -> pd.DataFrame:
    """A seeded table of the 20 features; ``drift`` shifts the features in DRIFTED."""
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for i, name in enumerate(NUMERIC):
        base = rng.lognormal(0.0, 0.5, rows) if i % 3 == 0 else rng.normal(i, 1.0 + i / 10, rows)
        data[name] = base
    for i, name in enumerate(CATEGORIES):
        levels = [f"v{j}" for j in range(4 + i)]
        weights = np.linspace(1.0, 2.0, len(levels))
        data[name] = rng.choice(levels, rows, p=weights / weights.sum())
    frame = pd.DataFrame(data)
    if drift:
        frame["n00"] = frame["n00"] * 1.6  # lognormal stretched
        frame["n01"] = frame["n01"] + 0.8 * frame["n01"].std()  # clear shift
        frame["n02"] = frame["n02"] * 1.5 + 0.0  # wider spread
        frame["n03"] = frame["n03"] + 0.15 * frame["n03"].std()  # small shift
        frame["n04"] = frame["n04"] + 0.05 * frame["n04"].std()  # barely moves
        levels = sorted(frame["c0"].unique())
        frame["c0"] = rng.choice(
            levels,
            rows,
            p=np.linspace(3.0, 0.5, len(levels)) / np.linspace(3.0, 0.5, len(levels)).sum(),
        )
        levels1 = sorted(frame["c1"].unique())
        w1 = np.linspace(1.0, 2.0, len(levels1))
        w1[0] *= 1.3  # a mild change of one level's share
        frame["c1"] = rng.choice(levels1, rows, p=w1 / w1.sum())
    return frame


def _contract() -> Any:
    from shared.contract import parse_contract

    features = [{"name": n, "type": "float"} for n in NUMERIC] + [
        {"name": c, "type": "category", "values": [f"v{j}" for j in range(4 + i)]}
        for i, c in enumerate(CATEGORIES)
    ]
    return parse_contract(
        {
            "name": "bench_drift",
            "task": "classification",
            "id": "id",
            "label": {"name": "y", "classes": [0, 1]},
            "features": features,
        }
    )


def flywheel_window(profile: Any, contract: Any, window: pd.DataFrame) -> dict[str, Any]:
    """Scores and verdicts of one window, counted on the reference bins."""
    from shared.drift import feature_scores, is_drifted, reference_counts
    from shared.features import to_frame

    frame = to_frame(contract, {f: window[f].to_numpy() for f in contract.feature_names})
    scores: dict[str, dict[str, float]] = {}
    for f in contract.feature_names:
        _, hist = reference_counts(profile, f)
        hist.update(frame[f].to_numpy())
        scores[f] = feature_scores(profile, f, hist.counts, hist.sums)
    val, mon = contract.validation, contract.monitoring
    return {
        "scores": scores,
        "psi_verdict": {f: s["psi"] > mon.drift_psi_threshold for f, s in scores.items()},
        "monitoring_verdict": {
            f: s["psi"] > mon.drift_psi_threshold
            or s.get("wasserstein", 0.0) >= mon.drift_wasserstein_threshold
            for f, s in scores.items()
        },
        "validation_verdict": {
            f: is_drifted(
                s, val.psi_threshold, val.ks_threshold, val.js_threshold, val.wasserstein_threshold
            )
            for f, s in scores.items()
        },
    }


def _wasserstein_error(
    scores: dict[str, dict[str, float]], reference: pd.DataFrame, current: pd.DataFrame
) -> float:
    """Largest |binned - exact| normed Wasserstein over the numeric features (untimed)."""
    from scipy.stats import wasserstein_distance

    errors = [
        abs(
            scores[f]["wasserstein"]
            - wasserstein_distance(reference[f], current[f]) / np.std(reference[f])
        )
        for f in NUMERIC
    ]
    return round(float(max(errors)), 5)


def _agreement(a: dict[str, bool], b: dict[str, bool]) -> float:
    keys = sorted(set(a) & set(b))
    return sum(a[k] == b[k] for k in keys) / len(keys) if keys else 0.0


def _evidently(ref_path: Path, cur_path: Path) -> dict[str, Any]:
    try:
        python = ensure_venv(EVIDENTLY_VENV, EVIDENTLY_PACKAGES, "python") / "python"
    except subprocess.CalledProcessError as err:
        return {"error": f"installing Evidently failed: {err}"}
    start = time.perf_counter()
    done = subprocess.run(
        [
            str(python),
            "-c",
            EVIDENTLY_SCRIPT,
            str(ref_path),
            str(cur_path),
            ",".join(NUMERIC),
            ",".join(CATEGORIES),
            str(REPEATS),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["subprocess_seconds"] = time.perf_counter() - start
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Time both drift computations per window size and compare their verdicts."""
    from shared.drift import build_profile
    from shared.features import to_frame

    contract = _contract()
    ref_rows = 20_000 if quick else 100_000
    windows = [10_000] if quick else [10_000, 100_000]
    reference = make_data(ref_rows, seed=1, drift=False)
    builds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        ref_frame = to_frame(contract, {f: reference[f].to_numpy() for f in contract.feature_names})
        profile = build_profile(contract, ref_frame)
        builds.append(time.perf_counter() - start)
    profile_s = statistics.median(builds)
    results: dict[str, Any] = {
        "features": {"numeric": len(NUMERIC), "categorical": len(CATEGORIES)},
        "reference_rows": ref_rows,
        "truly_drifted": sorted(DRIFTED),
        "flywheel_profile_build_s": round(profile_s, 4),
        "windows": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = Path(tmp) / "reference.parquet"
        reference.to_parquet(ref_path)
        for rows in windows:
            current = make_data(rows, seed=2, drift=True)
            cur_path = Path(tmp) / f"current_{rows}.parquet"
            current.to_parquet(cur_path)
            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                ours = flywheel_window(profile, contract, current)
                times.append(time.perf_counter() - t0)
            theirs = _evidently(ref_path, cur_path)
            truth = {f: f in DRIFTED for f in contract.feature_names}
            entry: dict[str, Any] = {
                "flywheel_s": round(statistics.median(times), 4),
                "flywheel_with_profile_s": round(statistics.median(times) + profile_s, 4),
                "flywheel_drifted_psi": sorted(f for f, v in ours["psi_verdict"].items() if v),
                "flywheel_drifted_monitoring": sorted(
                    f for f, v in ours["monitoring_verdict"].items() if v
                ),
                "flywheel_drifted_validation": sorted(
                    f for f, v in ours["validation_verdict"].items() if v
                ),
                "flywheel_psi_vs_truth": _agreement(ours["psi_verdict"], truth),
                "flywheel_monitoring_vs_truth": _agreement(ours["monitoring_verdict"], truth),
                "flywheel_validation_vs_truth": _agreement(ours["validation_verdict"], truth),
                "wasserstein": {
                    f: round(s["wasserstein"], 4)
                    for f, s in ours["scores"].items()
                    if "wasserstein" in s
                },
                "wasserstein_max_abs_error_vs_exact": _wasserstein_error(
                    ours["scores"], reference, current
                ),
            }
            if "error" in theirs:
                entry["evidently_error"] = theirs["error"]
            else:
                ev = {k: bool(v) for k, v in theirs["drifted"].items()}
                entry.update(
                    {
                        "evidently_s": round(theirs["seconds"], 4),
                        "evidently_subprocess_s": round(theirs["subprocess_seconds"], 2),
                        "evidently_drifted": sorted(f for f, v in ev.items() if v),
                        "evidently_methods": sorted(set(theirs["methods"].values())),
                        "agreement_psi_vs_evidently": _agreement(ours["psi_verdict"], ev),
                        "agreement_monitoring_vs_evidently": _agreement(
                            ours["monitoring_verdict"], ev
                        ),
                        "agreement_validation_vs_evidently": _agreement(
                            ours["validation_verdict"], ev
                        ),
                        "evidently_vs_truth": _agreement(ev, truth),
                        "speedup": round(theirs["seconds"] / statistics.median(times), 1),
                        # Evidently processes the reference on every run; so does this one.
                        "speedup_with_profile": round(
                            theirs["seconds"] / (statistics.median(times) + profile_s), 1
                        ),
                    }
                )
            results["windows"][str(rows)] = entry
    return results


def main(argv: list[str]) -> int:
    """Run, print and save the figures."""
    results = run(quick="--quick" in argv)
    text = json.dumps(results, indent=2)
    print(text)
    if "--quick" not in argv:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
