"""Names as the data writes them (spaces, hyphens, dots, parentheses, non-ASCII), everywhere.

The contract accepts them, the ONNX graph gets safe input names of its own (recorded in
the manifest), and serving answers per-feature tensors named exactly like the features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression

from services.serving.inputs import InputSpec
from services.serving.model import LoadedModel
from services.serving.tensors import Tensor
from services.serving.testing import register_model
from services.validation.core import Validator
from services.validation.metrics import ValidationMetrics
from shared.cli._output import emit
from shared.cli.data import rows_to_events
from shared.cli.predict import build_request
from shared.contract import Contract, ContractError, parse_contract
from shared.events import BatchCreated, DatasetValidated
from shared.features import build_pipeline, onnx_feeds, onnx_input_names, to_frame, to_onnx
from shared.onnx_names import safe_names
from shared.registry import Registry
from shared.store import ArtifactStore
from tests.unit.test_contract_infer import ingest

NAMES = [
    "dew point",
    "sea-level_pressure",
    "sepal length (cm)",
    "température",
    "a_b",
    "a b",
    "label",
    "1st",
    "x.y",
]


def weird_contract(task: str = "classification") -> Contract:
    features: list[dict[str, object]] = [
        {"name": n, "type": "float", "nullable": True} for n in NAMES
    ]
    features.append({"name": "colour, sort of", "type": "category", "values": ["red, dark", "b"]})
    label: dict[str, object] = {"name": "the label (y)"}
    extra: dict[str, object] = {}
    if task == "classification":
        label["classes"] = ["virginica", "setosa"]
    else:
        extra["promotion"] = {"primary_metric": "r2"}
    return parse_contract(
        {
            "name": "weird",
            "task": task,
            "id": "event id",
            "event_time": "when (UTC)",
            "label": label,
            "features": features,
            "groups": ["colour, sort of"],
            **extra,
        }
    )


def rows(contract: Contract, n: int = 200) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    cols: dict[str, np.ndarray] = {name: rng.normal(size=n) for name in NAMES}
    cols["dew point"][::17] = np.nan
    cols["colour, sort of"] = rng.choice(["red, dark", "b"], n)
    return cols


def test_safe_names_are_identifiers_distinct_and_keep_safe_names() -> None:
    mapping = safe_names(NAMES, reserved=["label", "probabilities"])
    assert list(mapping) == NAMES
    assert len(set(mapping.values())) == len(NAMES)
    assert all(v.isascii() and v.isidentifier() for v in mapping.values())
    assert mapping["a_b"] == "a_b"  # already safe: kept, the unsafe "a b" moves aside
    assert mapping["a b"] == "a_b_2"
    assert mapping["label"] == "label_2"  # the graph's output owns "label"
    assert mapping["1st"] == "_1st"
    assert safe_names(["AGEP", "SCHL"]) == {"AGEP": "AGEP", "SCHL": "SCHL"}


def test_contract_accepts_any_printable_name_and_refuses_control_characters() -> None:
    contract = weird_contract()
    assert contract.feature_names[:3] == NAMES[:3]
    assert contract.id == "event id"
    base = {
        "name": "toy",
        "task": "classification",
        "id": "id",
        "label": {"name": "y", "classes": [0, 1]},
    }
    for bad, field in (("tab\there", "features.0.name"), ("", "features.0.name")):
        with pytest.raises(ContractError) as err:
            parse_contract({**base, "features": [{"name": bad, "type": "float"}]}, "toy.yaml")
        assert str(err.value).startswith(f"toy.yaml: {field}: "), err.value
    with pytest.raises(ContractError, match=r"^toy\.yaml: label\.name: .*control character"):
        parse_contract(
            {
                **base,
                "label": {"name": "y\n", "classes": [0, 1]},
                "features": [{"name": "a", "type": "float"}],
            },
            "toy.yaml",
        )


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_exported_graph_takes_the_safe_names_and_matches_sklearn(task: str) -> None:
    contract = weird_contract(task)
    frame = to_frame(contract, rows(contract))
    y = np.arange(len(frame)) % 2 if task == "classification" else frame["a_b"].to_numpy() * 3
    if task == "classification":
        y = np.where(y == 0, "virginica", "setosa")
        est = LogisticRegression(max_iter=300)
    else:
        est = HistGradientBoostingRegressor(max_iter=10)
    pipeline = build_pipeline(contract, est).fit(frame, y)
    session = ort.InferenceSession(to_onnx(pipeline, contract), providers=["CPUExecutionProvider"])
    names = onnx_input_names(contract)
    assert [i.name for i in session.get_inputs()] == list(names.values())
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == (["label", "probabilities"] if task == "classification" else ["variable"])
    got = session.run(None, onnx_feeds(contract, frame))
    if task == "classification":
        np.testing.assert_array_equal(got[0], pipeline.predict(frame))
        np.testing.assert_allclose(got[1], pipeline.predict_proba(frame), atol=1e-5)
    else:
        np.testing.assert_allclose(got[0].ravel(), pipeline.predict(frame), rtol=1e-5, atol=1e-4)


def test_serving_answers_tensors_named_like_the_features(tmp_path: Path) -> None:
    contract = weird_contract()
    cols = rows(contract)
    frame = to_frame(contract, cols)
    y = np.where(frame["sepal length (cm)"] > 0, "virginica", "setosa")
    pipeline = build_pipeline(contract, LogisticRegression(max_iter=300)).fit(frame, y)
    onnx = to_onnx(pipeline, contract)
    registry = Registry(ArtifactStore(f"file://{tmp_path}"))
    manifest = register_model(registry, contract, onnx, dataset_version="d1")
    assert registry.get("weird", manifest.version).onnx_inputs == onnx_input_names(contract)
    spec = InputSpec(contract, 256)
    model = LoadedModel(manifest, onnx, spec, intra_op_threads=1)
    metadata = {t.name for t in spec.tensors}
    assert set(NAMES) | {"colour, sort of"} <= metadata
    tensors = [
        Tensor(f.name, "FP64", (len(frame),), frame[f.name].to_numpy())
        if f.is_numeric
        else Tensor(f.name, "BYTES", (len(frame),), np.array([v.encode() for v in frame[f.name]]))
        for f in contract.features
    ]
    feeds, n = spec.feeds(tensors)
    assert n == len(frame)
    out = model.predict(feeds)
    np.testing.assert_array_equal(out["label"], pipeline.predict(frame))
    matrix = frame.assign(**{"colour, sort of": (frame["colour, sort of"] == "b").astype(float)})
    x = matrix.to_numpy(dtype=np.float64)
    feeds, _ = spec.feeds([Tensor("input", "FP64", x.shape, x.ravel())])
    np.testing.assert_allclose(model.predict(feeds)["probabilities"], out["probabilities"])


def test_publish_ingestion_and_predict_keep_the_names(tmp_path: Path) -> None:
    contract = weird_contract()
    cols = rows(contract, 30)
    table = pa.table(
        {
            "event id": [f"e{i}" for i in range(30)],
            "when (UTC)": [f"2024-01-01T00:{i:02d}:00Z" for i in range(30)],
            **{k: pa.array(v) for k, v in cols.items()},
            "the label (y)": ["setosa", "virginica"] * 15,
        }
    )
    events = rows_to_events(contract, table)
    assert list(events[0]["features"]) == contract.feature_names
    batch = ingest(ArtifactStore(f"file://{tmp_path}"), contract, table)
    assert set(contract.feature_names) <= set(batch.column_names)
    assert batch.column("colour, sort of").to_pylist() == cols["colour, sort of"].tolist()
    request = build_request("weird", "", contract, table.to_pandas())
    assert [t.name for t in request.inputs] == contract.feature_names


def test_cli_tables_print_names_and_values_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    emit([{"x [cm]": "[/red] closing", "row": 1}], ["row", "x [cm]"], False, "[bold] title")
    out = capsys.readouterr().out
    assert "x [cm]" in out
    assert "[/red] closing" in out
    assert "[bold] title" in out


def test_validation_drift_metrics_carry_the_feature_names(tmp_path: Path) -> None:
    contract = weird_contract()
    store = ArtifactStore(f"file://{tmp_path}")
    registry = CollectorRegistry()
    validator = Validator({"weird": contract}, store, ValidationMetrics(registry))
    n = 200
    table = pa.table(
        {
            "event id": [f"e{i}" for i in range(2 * n)],
            "when (UTC)": [f"2024-01-01T{i // 60 % 24:02d}:{i % 60:02d}:00Z" for i in range(2 * n)],
            **{k: pa.array(v) for k, v in rows(contract, 2 * n).items()},
            "the label (y)": ["setosa", "virginica"] * n,
        }
    )
    batch = ingest(store, contract, table)
    for part in (batch.slice(0, n), batch.slice(n)):
        sha, uri = store.put_parquet("raw/weird", part)
        event = validator.handle(
            BatchCreated(dataset="weird", batch_id=sha, uri=uri, rows=part.num_rows, sha256=sha)
        )
        assert isinstance(event, DatasetValidated), event
    exposed = generate_latest(registry).decode()
    features = {
        s.labels["feature"]
        for family in text_string_to_metric_families(exposed)
        if family.name == "flywheel_validation_drift_score"
        for s in family.samples
    }
    assert set(contract.feature_names) <= features


def test_a_feature_called_input_is_told_apart_from_the_matrix() -> None:
    label = {"name": "y", "classes": [0, 1]}
    base = {"name": "t", "task": "classification", "id": "id", "label": label}
    two = parse_contract(
        {**base, "features": [{"name": "input", "type": "float"}, {"name": "x", "type": "float"}]}
    )
    spec = InputSpec(two, 8)
    column = Tensor("input", "FP64", (3,), np.array([1.0, 2.0, 3.0]))
    x = Tensor("x", "FP64", (3,), np.array([4.0, 5.0, 6.0]))
    feeds, _ = spec.feeds([column, x])
    np.testing.assert_array_equal(feeds["input"][:, 0], [1.0, 2.0, 3.0])
    matrix = np.array([[1.0, 4.0], [2.0, 5.0]])
    feeds, n = spec.feeds([Tensor("input", "FP64", matrix.shape, matrix.ravel())])
    assert n == 2
    np.testing.assert_array_equal(feeds["x"][:, 0], [4.0, 5.0])
    one = parse_contract(
        {**base, "features": [{"name": "input", "type": "category", "values": ["a", "b"]}]}
    )
    spec = InputSpec(one, 8)
    assert [t.name for t in spec.tensors] == ["input"]
    assert spec.matrix_input is None  # no matrix style of the same name
    feeds, _ = spec.feeds([Tensor("input", "BYTES", (2,), np.array([b"b", b"a"], dtype=object))])
    assert feeds["input"][:, 0].tolist() == ["b", "a"]
