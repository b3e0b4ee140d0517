"""The shared feature pipeline's ONNX parity and the drift statistics."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance
from sklearn.linear_model import LogisticRegression

from shared.contract import parse_contract
from shared.drift import (
    Profile,
    StreamingHistogram,
    bin_counts,
    build_profile,
    compare,
    feature_scores,
    is_drifted,
    ks_binned,
    psi,
    reference_counts,
)
from shared.features import build_pipeline, onnx_feeds, to_frame, to_onnx

CONTRACT = parse_contract(
    {
        "name": "toy",
        "task": "classification",
        "id": "id",
        "label": {"name": "y", "classes": [0, 1]},
        "features": [
            {"name": "x", "type": "float"},
            {"name": "k", "type": "int", "nullable": True},
            {"name": "c", "type": "category", "values": ["a", "b", "c"]},
            {"name": "f", "type": "bool"},
        ],
    }
)


def sample(n: int, shift: float = 0.0, seed: int = 0) -> tuple[dict[str, list[object]], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1, n)
    k = rng.integers(0, 5, n).astype(float)
    k[:5] = np.nan
    c = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2] if shift == 0 else [0.2, 0.3, 0.5])
    f = rng.random(n) > 0.5
    y = ((x + (c == "a") + f + rng.normal(0, 0.5, n)) > 1).astype(int)
    return {"x": list(x), "k": list(k), "c": list(c), "f": list(f)}, y


def test_pipeline_exports_whole_with_parity() -> None:
    cols, y = sample(400)
    frame = to_frame(CONTRACT, cols)
    pipe = build_pipeline(CONTRACT, LogisticRegression(max_iter=200)).fit(frame, y)
    sess = ort.InferenceSession(to_onnx(pipe, CONTRACT), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "k", "c", "f"]
    labels, probs = sess.run(None, onnx_feeds(CONTRACT, frame))
    assert (labels == pipe.predict(frame)).all()
    assert np.abs(probs - pipe.predict_proba(frame)).max() < 1e-5


def test_to_frame_normalises_types() -> None:
    frame = to_frame(
        CONTRACT, {"x": ["1.5", None], "k": [1, None], "c": ["a", None], "f": [True, 0]}
    )
    assert frame["x"].tolist()[0] == 1.5
    assert np.isnan(frame["x"].tolist()[1])
    assert frame["c"].tolist() == ["a", "__missing__"]
    assert frame["f"].tolist() == [1.0, 0.0]


def test_drift_scores_separate_shift_from_noise() -> None:
    ref_cols, ref_y = sample(5000)
    profile = build_profile(CONTRACT, to_frame(CONTRACT, ref_cols), ref_y)
    same_cols, _ = sample(5000, seed=1)
    shifted_cols, _ = sample(5000, shift=1.0, seed=2)
    same = compare(CONTRACT, profile, to_frame(CONTRACT, same_cols))
    shifted = compare(CONTRACT, profile, to_frame(CONTRACT, shifted_cols))
    assert not same.drifted, same
    assert set(shifted.drifted_features) >= {"x", "c"}
    assert shifted.features["x"]["psi"] > 0.2 > same.features["x"]["psi"]
    assert shifted.features["c"]["js"] > 0.1 > same.features["c"]["js"]


def test_streaming_histogram_equals_batch_counts() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=1000)
    edges = list(np.linspace(-2, 2, 9))
    hist = StreamingHistogram(edges=edges)
    for chunk in np.array_split(values, 7):
        hist.update(chunk)
    counts, sums = bin_counts(edges, values)
    assert (hist.counts == counts).all()
    assert np.allclose(hist.sums, sums)
    cats = StreamingHistogram(vocab=["a", "b"])
    cats.update(["a", "b", "b", "zzz"])
    assert cats.counts.tolist() == [1, 2, 1]  # unseen values land in the 'other' slot
    with pytest.raises(ValueError, match="edges"):
        StreamingHistogram()


def test_psi_and_ks_basics() -> None:
    ref = np.array([10, 20, 30, 40])
    assert psi(ref, ref) == pytest.approx(0.0)
    assert ks_binned(ref, ref) == pytest.approx(0.0)
    assert psi(ref, ref[::-1]) > 0.2
    assert ks_binned(ref, np.array([40, 30, 20, 10])) == pytest.approx(0.4)


ONE_FLOAT = parse_contract(
    {
        "name": "one",
        "task": "classification",
        "id": "id",
        "label": {"name": "y", "classes": [0, 1]},
        "features": [{"name": "x", "type": "float"}],
    }
)


def _window_scores(profile: Profile, values: np.ndarray) -> dict[str, float]:
    _, hist = reference_counts(profile, "x")
    for chunk in np.array_split(values, 3):  # streamed, as monitoring counts it
        hist.update(chunk)
    return feature_scores(profile, "x", hist.counts, hist.sums)


def _pair(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 50k-row reference and a 20k-row window of one kind of change."""
    if kind == "lognormal stretched":
        return rng.lognormal(0.0, 0.5, 50_000), rng.lognormal(0.0, 0.5, 20_000) * 1.4
    reference = rng.normal(0.0, 1.0, 50_000)
    current = {
        "shift": lambda: rng.normal(0.3, 1.0, 20_000),
        "wider": lambda: rng.normal(0.0, 1.6, 20_000),  # the CDFs cross in the middle
        "no drift": lambda: rng.normal(0.0, 1.0, 20_000),  # sampling noise only
    }[kind]()
    return reference, current


@pytest.mark.parametrize("kind", ["shift", "wider", "lognormal stretched", "no drift"])
def test_binned_wasserstein_is_close_to_the_exact_one(kind: str) -> None:
    reference, current = _pair(kind, np.random.default_rng(5))
    profile = build_profile(ONE_FLOAT, pd.DataFrame({"x": reference}))
    exact = wasserstein_distance(reference, current) / reference.std()
    assert _window_scores(profile, current)["wasserstein"] == pytest.approx(exact, abs=0.01)


def test_wasserstein_flags_a_small_shift_that_psi_misses() -> None:
    rng = np.random.default_rng(6)
    reference = rng.normal(10.0, 2.0, 50_000)
    profile = build_profile(ONE_FLOAT, pd.DataFrame({"x": reference}))
    small = _window_scores(profile, rng.normal(10.0 + 0.15 * 2.0, 2.0, 20_000))
    tiny = _window_scores(profile, rng.normal(10.0 + 0.02 * 2.0, 2.0, 20_000))
    assert small["psi"] < 0.2
    assert small["ks"] < 0.1
    assert small["wasserstein"] == pytest.approx(0.15, abs=0.015)
    assert is_drifted(small, 0.2, 0.1, 0.1, 0.1)
    assert tiny["wasserstein"] < 0.05
    assert not is_drifted(tiny, 0.2, 0.1, 0.1, 0.1)
    # The contract's threshold decides in compare().
    shifted = pd.DataFrame({"x": rng.normal(10.3, 2.0, 20_000)})
    assert compare(ONE_FLOAT, profile, shifted).drifted_features == ["x"]
    lenient = ONE_FLOAT.model_copy(
        update={
            "validation": ONE_FLOAT.validation.model_copy(update={"wasserstein_threshold": 0.5})
        }
    )
    assert not compare(lenient, profile, shifted).drifted
    assert compare(lenient, profile, shifted).features["x"]["wasserstein"] > 0.1


def test_profiles_without_bin_means_still_load_and_score() -> None:
    cols, y = sample(2000)
    profile = build_profile(CONTRACT, to_frame(CONTRACT, cols), y)
    stored = profile.model_dump(mode="json")
    for num in stored["numeric"].values():
        del num["bin_means"]  # a profile written before the Wasserstein score
    old = Profile.model_validate_json(json.dumps(stored))
    assert old.numeric["x"].bin_means is None
    shifted_cols, _ = sample(2000, shift=1.0, seed=2)
    frame = to_frame(CONTRACT, shifted_cols)
    drift = compare(CONTRACT, old, frame)
    assert set(drift.features["x"]) == {"psi", "ks"}
    assert "x" in drift.drifted_features
    assert set(compare(CONTRACT, profile, frame).features["x"]) == {"psi", "ks", "wasserstein"}


def test_streaming_sums_ignore_nan_and_survive_infinities() -> None:
    edges = [0.0, 1.0]
    hist = StreamingHistogram(edges=edges)
    hist.update([-1.0, 0.5, 0.25, np.nan, 2.0, np.inf])
    assert hist.counts.tolist() == [1, 2, 2]
    assert hist.sums.tolist() == [-1.0, 0.75, 2.0]  # inf is counted but not summed
    hist.reset()
    assert hist.total == 0
    assert not hist.sums.any()


def test_tree_models_keep_parity_on_car_loans() -> None:
    """Car-loan's continuous inputs once broke HGB parity (0.05 gaps) via float32 scaling."""
    import pyarrow.csv as pacsv
    from sklearn.ensemble import HistGradientBoostingClassifier

    from shared.contract import load_contract
    from shared.features import table_to_frame
    from tests.conftest import CONTRACTS, need_data

    contract = load_contract(CONTRACTS / "car_loan.yaml")
    table = pacsv.read_csv(need_data("synthetic_car_loan_reference.csv")[0])
    frame = table_to_frame(contract, table)
    y = table.column("repaid").to_numpy().astype(int)
    estimator = HistGradientBoostingClassifier(max_iter=200, max_leaf_nodes=15, random_state=42)
    pipe = build_pipeline(contract, estimator).fit(frame[:40000], y[:40000])
    sess = ort.InferenceSession(to_onnx(pipe, contract), providers=["CPUExecutionProvider"])
    holdout = frame[40000:]
    labels, probs = sess.run(None, onnx_feeds(contract, holdout))
    assert (labels == pipe.predict(holdout)).all()
    assert np.abs(probs - pipe.predict_proba(holdout)).max() < 1e-5
