"""Nullable features of every type, integer-coded categories and 0/1 booleans, end to end
without transport: data events -> ingestion (both decoders) -> validation rules ->
training frame -> ONNX, and serving's inputs (NaN, empty BYTES, a left-out tensor)
giving the very feeds training's own pipeline gets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.serving.inputs import InputSpec
from services.serving.tensors import Tensor
from services.training.cpu import cpu_threads
from services.training.estimators import BOOSTING, GRIDS, LINEAR, make_estimator
from services.validation.rules import evaluate
from shared.contract import parse_contract
from shared.features import MISSING_CATEGORY, build_pipeline, onnx_feeds, table_to_frame, to_onnx

from .test_ingestion_arrowpath import _run, _same

CONTRACT = parse_contract(
    {
        "name": "nulls",
        "task": "classification",
        "id": "id",
        "event_time": "ts",
        "label": {"name": "y", "classes": [0, 1]},
        "features": [
            {"name": "f", "type": "float", "nullable": True},
            {"name": "i", "type": "int", "nullable": True},
            {"name": "b", "type": "bool", "nullable": True},
            {"name": "c", "type": "category", "values": [1, 2, 3], "nullable": True},
            {"name": "req", "type": "float"},
        ],
    }
)
ABSENT = object()


def _event(number: int, **features: Any) -> bytes:
    body = {"f": 0.5, "i": 2, "b": True, "c": "1", "req": 1.0}
    for key, value in features.items():
        if value is ABSENT:
            body.pop(key)
        else:
            body[key] = value
    e = {"dataset": "nulls", "event_id": f"e{number}", "event_time": "2024-05-01"}
    return json.dumps(e | {"features": body, "label": number % 2}).encode()


_FORMS: dict[str, st.SearchStrategy[Any]] = {
    "f": st.sampled_from([None, ABSENT, 1.5, -2, 0]),
    "i": st.sampled_from([None, ABSENT, 3, 4.0, -7]),
    "b": st.sampled_from([None, ABSENT, True, False, 0, 1]),
    "c": st.sampled_from([None, ABSENT, 1, 2, 3, "1", "3", 2.0]),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.fixed_dictionaries(_FORMS), min_size=1, max_size=8),
    same=st.booleans(),
)
def test_nullable_features_of_every_type_are_accepted_alike_on_every_path(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]], same: bool
) -> None:
    if same:  # one form for the whole chunk: the Arrow path's case
        rows = [rows[0]] * len(rows)
    values = [_event(i, **r) for i, r in enumerate(rows)]
    tmp = tmp_path_factory.mktemp("nulls")
    _same(tmp, values, CONTRACT)
    tables, letters, _, _ = _run(tmp / "again", values, arrow=True, contract=CONTRACT)
    assert letters == []  # every form above is acceptable
    # Strictly typed events are batched before the lenient ones: match rows by id.
    got = {row["id"]: row for row in tables["nulls"].to_pylist()}
    for number, sent in enumerate(rows):
        row = got[f"e{number}"]
        for name, value in sent.items():
            if value is None or value is ABSENT:
                expected: Any = None
            elif name == "b":
                expected = bool(value)
            elif name == "c":
                expected = str(int(value))  # 1, "1" and 1.0 are the category "1"
            elif name == "i":
                expected = int(value)
            else:
                expected = float(value)
            assert row[name] == expected
            assert type(row[name]) is type(expected)


def test_a_null_where_the_contract_forbids_it_is_a_dead_letter(tmp_path: Path) -> None:
    values = [_event(0, req=None), _event(1, req=ABSENT), _event(2, b=2), _event(3, i=1.5)]
    _, letters, _, _ = _run(tmp_path, values, arrow=True, contract=CONTRACT)
    assert [(field, error.split(":")[0]) for _, field, error in letters] == [
        ("features.req", "null_feature"),
        ("features.req", "missing_feature"),
        ("features.b", "wrong_type"),  # a bool is true/false or 0/1, not 2
        ("features.i", "wrong_type"),
    ]


def _batch(n: int, seed: int = 0) -> pa.Table:
    """A learnable batch with about a fifth of every nullable feature null."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=n)
    i = rng.integers(0, 5, n)
    b = rng.random(n) < 0.5
    c = rng.choice(["1", "2", "3"], n)
    y = ((f + b + (c == "2") + rng.normal(0, 0.5, n)) > 1).astype(int)

    def nulled(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        gone = rng.random(n) < 0.2
        return pa.array([None if g else v for v, g in zip(values.tolist(), gone, strict=True)], typ)

    return pa.table(
        {
            "id": [str(k) for k in range(n)],
            "f": nulled(f, pa.float64()),
            "i": nulled(i, pa.int64()),
            "b": nulled(b, pa.bool_()),
            "c": nulled(c, pa.string()),
            "req": rng.normal(size=n),
            "y": y,
        }
    )


def test_validation_lets_nulls_through_where_nullable_and_only_there() -> None:
    table = _batch(200)
    outcome = evaluate(CONTRACT, table, None)
    assert outcome.keep.all()
    assert {r.rule for r in outcome.rules if r.rule.startswith("not_null:")} == {"not_null:req"}
    assert all(r.passed for r in outcome.rules if r.kind == "row")
    forbidden = table.set_column(5, "req", pa.array([None] * 10 + [1.0] * 190, pa.float64()))
    outcome = evaluate(CONTRACT, forbidden, None)
    assert int((~outcome.keep).sum()) == 10
    assert "not_null:req" in {r.rule for r in outcome.rules if not r.passed}


@pytest.mark.parametrize("family", [LINEAR, BOOSTING])
def test_the_exported_graph_handles_nulls_as_the_pipeline_does_and_serving_feeds_them(
    family: str,
) -> None:
    table = _batch(400)
    # A nullable feature that is null in every training row still exports and serves.
    table = table.set_column(1, "f", pa.array([None] * 400, pa.float64()))
    x = table_to_frame(CONTRACT, table)
    y = np.asarray(table.column("y"))
    pipeline = build_pipeline(
        CONTRACT, make_estimator("classification", family, GRIDS[family][0], 1)
    )
    with cpu_threads(1):  # OpenMP threads spin on shared cores
        pipeline.fit(x, y)
    session = ort.InferenceSession(to_onnx(pipeline, CONTRACT), providers=["CPUExecutionProvider"])
    feeds = onnx_feeds(CONTRACT, x)
    labels, proba = session.run(None, feeds)
    assert np.abs(proba - pipeline.predict_proba(x)).max() < 1e-5
    assert (labels == pipeline.predict(x)).all()

    # Serving: nulls as NaN, empty BYTES, and the all-null feature's tensor left out.
    spec = InputSpec(CONTRACT, 1000)
    n = len(x)
    cats = [b"" if v == MISSING_CATEGORY else v.encode() for v in x["c"]]
    tensors = [
        Tensor("i", "FP64", (n,), x["i"].to_numpy()),
        Tensor("b", "FP32", (n, 1), x["b"].to_numpy(np.float32)),
        Tensor("c", "BYTES", (n,), np.array(cats, dtype=object)),
        Tensor("req", "FP32", (n,), x["req"].to_numpy(np.float32)),
    ]
    served, rows = spec.feeds(tensors)
    assert rows == n
    served_proba = session.run(None, served)[1]
    assert np.array_equal(served_proba, proba)
    # The 2-D style: NaN marks the nulls, categories by value (1, 2, 3).
    codes = np.array([np.nan if v == MISSING_CATEGORY else float(v) for v in x["c"]])
    matrix = np.column_stack([x["f"], x["i"], x["b"], codes, x["req"]]).astype(np.float32)
    served, _ = spec.feeds([Tensor("input", "FP32", matrix.shape, matrix.ravel())])
    assert np.array_equal(session.run(None, served)[1], proba)


def test_serving_refuses_to_leave_out_a_feature_that_is_not_nullable() -> None:
    spec = InputSpec(CONTRACT, 10)
    with pytest.raises(Exception, match="'req': missing"):
        spec.feeds([Tensor("f", "FP32", (1,), np.array([1.0], np.float32))])
