"""Every task end to end in one process: train -> ONNX -> parity -> registry -> serve.

Binary with string classes listed unsorted, multiclass with int and with string classes
unsorted, regression with labels around 1e-3 and 1e6. Each trains through the training
core on a few hundred generated rows, and serving (its data plane behind the in-process
gRPC server, called through a real stub) must answer what the registered pipeline —
refit from the manifest, as ``flywheel reproduce`` does — predicts, probabilities in the
contract's class order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
import structlog
from prometheus_client import CollectorRegistry

from services.serving.dataplane import DataPlane
from services.serving.events import PredictionPublisher
from services.serving.grpc.server import GrpcServer
from services.serving.inputs import InputSpec
from services.serving.metrics import ServingMetrics
from services.serving.model import LoadedModel
from services.serving.repository import ModelRepository
from services.serving.settings import ServingSettings
from services.serving.testing import register_model
from services.training.estimators import make_estimator
from services.training.evaluation import Predictions
from services.training.export import class_columns, in_contract_order
from services.training.gates import evaluate_gates
from services.training.parity import compare
from services.training.scoring import classification_metrics, ovr_roc_auc
from services.training.trainer import TrainConfig, fit, prepare, train
from shared.contract import Contract, ContractError, PromotionPolicy, parse_contract
from shared.datasets import DatasetCatalog
from shared.features import build_pipeline, onnx_feeds, table_to_frame, to_onnx
from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc
from shared.registry import ModelManifest, Registry
from shared.store import ArtifactStore
from tests.unit.test_training_data import add_dataset

LOG = structlog.get_logger()
ROWS = 400
FAST = TrainConfig(
    search_budget_s=0.2, cv_folds=2, importance_rows=200, importance_repeats=1, min_group_rows=20
)


def task_contract(label: dict[str, Any], task: str = "classification") -> Contract:
    return parse_contract(
        {
            "name": "task",
            "task": task,
            "id": "id",
            "label": label,
            "features": [
                {"name": "x", "type": "float"},
                {"name": "z", "type": "float"},
                {"name": "c", "type": "category", "values": ["a", "b", "c"]},
                {"name": "g", "type": "category", "values": ["u", "v"]},
            ],
            "groups": ["g"],
            "training": {"min_rows": 100, "search_time_budget_s": 0.2},
            "promotion": {"max_fairness_gap": 1.0},
        }
    )


def task_table(contract: Contract, scale: float = 1.0, seed: int = 0) -> pa.Table:
    """Learnable rows: classes by score bands (contract order), or a scaled regression."""
    rng = np.random.default_rng(seed)
    x, z = rng.normal(0, 1, ROWS), rng.normal(0, 1, ROWS)
    c, g = rng.choice(["a", "b", "c"], ROWS), rng.choice(["u", "v"], ROWS)
    score = 1.5 * x + z + (c == "a") + rng.normal(0, 0.3, ROWS)
    classes = contract.label.classes
    if classes:
        cuts = np.quantile(score, np.linspace(0, 1, len(classes) + 1)[1:-1])
        label: Any = [classes[i] for i in np.searchsorted(cuts, score)]
    else:
        label = scale * (10 + score)
    return pa.table({"id": np.arange(ROWS), "x": x, "z": z, "c": c, "g": g, "y": label})


def trained(contract: Contract, table: pa.Table, root: Path) -> tuple[Registry, ModelManifest]:
    store = ArtifactStore(f"file://{root / 'store'}")
    version = add_dataset(store, contract.name, [table])
    registry = Registry(store)
    result = train(
        contract,
        registry,
        DatasetCatalog(store),
        dataset_version=version.id,
        reason="task test",
        config=FAST,
        threads=1,
    )
    registry.set_alias(contract.name, "champion", 1, actor="test", reason="task test")
    return registry, result.manifest


def registered_pipeline(contract: Contract, registry: Registry, manifest: ModelManifest) -> Any:
    """The registered version's sklearn pipeline, refit from its manifest, and its holdout."""
    catalog = DatasetCatalog(registry.store)
    prepared = prepare(contract, catalog, manifest.dataset_version, FAST)
    pipeline = fit(contract, manifest.estimator, dict(manifest.params), manifest.seed, prepared)
    return pipeline, prepared.data.x_holdout


class Serving:
    """The data plane and gRPC server on the test's event loop, and a stub to call it."""

    def __init__(self, contract: Contract, registry: Registry):
        metrics = ServingMetrics(CollectorRegistry())
        self.repo = ModelRepository(
            {contract.name: contract}, registry, metrics, LOG, max_batch_size=256
        )

        async def send(messages: list[Any]) -> None:
            self.events += len(messages)

        self.events = 0
        self.publisher = PredictionPublisher(
            send,
            buffer_rows=10_000,
            batch_rows=1000,
            dropped=lambda m, n: None,
            published=lambda m, n: None,
            log=LOG,
        )
        settings = ServingSettings(grpc_host="127.0.0.1", grpc_port=0, max_batch_size=256)
        self.server = GrpcServer(DataPlane(self.repo, self.publisher, metrics), settings, LOG)

    async def __aenter__(self) -> pb_grpc.GRPCInferenceServiceStub:
        await self.publisher.start()
        await self.repo.load_from_registry()
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}")
        return pb_grpc.GRPCInferenceServiceStub(self.channel)

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.server.stop()
        await self.publisher.stop()
        await self.repo.close()


def columnar_request(contract: Contract, x: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=contract.name)
    for f in contract.features:
        col = x[f.name].to_numpy()
        tensor = request.inputs.add(name=f.name, shape=[len(col), 1])
        if f.is_numeric:
            tensor.datatype = "FP32"
            tensor.contents.fp32_contents.extend(col.astype(np.float32).tolist())
        else:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(str(v).encode() for v in col)
    return request


def outputs(response: pb.ModelInferResponse) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in response.outputs:
        if t.datatype == "BYTES":
            out[t.name] = [v.decode() for v in t.contents.bytes_contents]
        elif t.datatype == "INT64":
            out[t.name] = np.asarray(t.contents.int64_contents).reshape(tuple(t.shape))
        else:
            out[t.name] = np.asarray(t.contents.fp32_contents).reshape(tuple(t.shape))
    return out


@pytest.fixture
async def served() -> AsyncIterator[Any]:
    """A function serving a registry for the test's duration (entered at most once)."""
    stack: list[Serving] = []

    async def start(contract: Contract, registry: Registry) -> pb_grpc.GRPCInferenceServiceStub:
        stack.append(Serving(contract, registry))
        return await stack[-1].__aenter__()

    yield start
    for serving in stack:
        await serving.__aexit__()


CLASSIFICATION = [
    pytest.param(["yes", "no"], id="binary-strings-unsorted"),
    pytest.param([2, 0, 1], id="multiclass-ints-unsorted"),
    pytest.param(["virginica", "setosa", "versicolor"], id="multiclass-strings-unsorted"),
]


@pytest.mark.parametrize("classes", CLASSIFICATION)
async def test_classes_in_any_order_train_serve_and_keep_the_contract_order(
    classes: list[Any], tmp_path: Path, served: Any
) -> None:
    contract = task_contract({"name": "y", "classes": classes})
    registry, manifest = trained(contract, task_table(contract), tmp_path)
    assert manifest.parity.passed, manifest.parity
    assert manifest.gates["beats_baseline"].passed, manifest.gates
    assert (manifest.model_extra or {})["probability_columns"] == classes
    multiclass = len(classes) > 2
    assert manifest.metrics["roc_auc"] > 0.8
    gaps = manifest.group_metrics["g"]["gaps"]
    expected_gaps = (
        {f"{r}:{c}" for c in classes for r in ("selection_rate", "fpr", "fnr")}
        if multiclass
        else {"selection_rate", "fpr", "fnr"}
    )
    assert set(gaps) == expected_gaps
    pipeline, x = registered_pipeline(contract, registry, manifest)
    columns = [list(pipeline.classes_).index(c) for c in classes]
    want_proba = pipeline.predict_proba(x)[:, columns]
    want_label = pipeline.predict(x)

    stub = await served(contract, registry)
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=contract.name))
    probs_meta = next(o for o in meta.outputs if o.name == "probabilities")
    assert probs_meta.parameters["classes"].string_param == ",".join(map(str, classes))
    assert list(probs_meta.shape) == [-1, len(classes)]
    label_meta = next(o for o in meta.outputs if o.name == "label")
    string_classes = isinstance(classes[0], str)
    assert label_meta.datatype == ("BYTES" if string_classes else "INT64")

    got = outputs(await stub.ModelInfer(columnar_request(contract, x)))
    np.testing.assert_allclose(got["probabilities"], want_proba, atol=1e-5)
    assert [str(v) for v in np.asarray(got["label"]).tolist()] == [str(v) for v in want_label]
    # The label is the class of the highest probability, in contract order.
    top = [classes[i] for i in np.argmax(got["probabilities"], axis=1)]
    assert [str(v) for v in top] == [str(v) for v in want_label]


@pytest.mark.parametrize("scale", [1e-3, 1e6], ids=["labels-1e-3", "labels-1e6"])
async def test_regression_on_any_scale_passes_its_gates_and_serves(
    scale: float, tmp_path: Path, served: Any
) -> None:
    contract = task_contract({"name": "y", "type": "float"}, task="regression")
    assert contract.promotion.primary_metric == "r2"
    registry, manifest = trained(contract, task_table(contract, scale=scale), tmp_path)
    assert manifest.parity.passed, manifest.parity
    worst = manifest.parity.worst_row
    assert worst is not None
    assert worst["ratio"] <= 1.0
    assert abs(worst["onnx"] - worst["sklearn"]) <= worst["bound"]
    assert manifest.metrics["r2"] > 0.8
    assert all(g.passed for g in manifest.gates.values()), manifest.gates
    entry = manifest.group_metrics["g"]
    assert set(entry["gaps"]) == {"relative_mae"}
    # Scale-free: the relative MAE is a share of the label's spread, whatever its units.
    assert 0 < entry["gaps"]["relative_mae"] < 0.5
    for group in entry["groups"].values():
        assert group["relative_mae"] == pytest.approx(group["mae"] / entry["label_spread"])
    pipeline, x = registered_pipeline(contract, registry, manifest)
    want = pipeline.predict(x)

    stub = await served(contract, registry)
    got = outputs(await stub.ModelInfer(columnar_request(contract, x)))
    np.testing.assert_allclose(got["prediction"], want, rtol=1e-5, atol=1e-5 * scale)


# --- the pieces, without training ------------------------------------------------------


def test_regression_defaults_to_r2_and_metrics_must_fit_the_task() -> None:
    assert task_contract({"name": "y"}, task="regression").promotion.primary_metric == "r2"
    body: dict[str, Any] = {
        "name": "t",
        "task": "regression",
        "id": "id",
        "label": {"name": "y"},
        "features": [{"name": "x", "type": "float"}],
    }
    with pytest.raises(ContractError, match="'roc_auc' is not a regression metric"):
        parse_contract({**body, "promotion": {"primary_metric": "roc_auc"}})
    classification = {**body, "task": "classification", "label": {"name": "y", "classes": [0, 1]}}
    assert parse_contract(classification).promotion.primary_metric == "roc_auc"
    with pytest.raises(ContractError, match="'mae' is not a classification metric"):
        parse_contract({**classification, "promotion": {"primary_metric": "mae"}})


def test_parity_tolerance_is_read_as_the_absolute_part() -> None:
    policy = PromotionPolicy.model_validate({"parity_tolerance": 1e-4})
    assert (policy.parity_atol, policy.parity_rtol) == (1e-4, 1e-5)
    with pytest.raises(ValueError, match="former name of parity_atol"):
        PromotionPolicy.model_validate({"parity_tolerance": 1e-4, "parity_atol": 1e-3})


def test_parity_is_relative_and_absolute_and_names_the_worst_row() -> None:
    contract = task_contract({"name": "y"}, task="regression")
    want = Predictions(np.array([1.0, 2.5e6, 3.0e6]), None)
    got = Predictions(np.array([1.0, 2.5e6 + 0.25, 3.0e6 + 45.0]), None)
    assert not compare(contract, want, got, 1e-5).passed  # absolute only: 0.25 fails
    tight = compare(contract, want, got, 1e-5, 1e-5)  # row 2's bound is 30
    assert not tight.passed
    assert tight.worst_row is not None
    assert (tight.worst_row["index"], tight.worst_row["onnx"]) == (2, 3.0e6 + 45.0)
    assert tight.worst_row["ratio"] == pytest.approx(1.5, rel=1e-6)
    loose = compare(contract, want, got, 1e-5, 1e-4)
    assert loose.passed
    assert loose.worst_row is not None
    assert loose.worst_row["index"] == 2
    assert (loose.max_abs_diff, loose.rtol) == (45.0, 1e-4)


def test_a_small_prediction_of_a_large_label_model_has_the_labels_rounding() -> None:
    # -138.853 from a linear model of labels about 1e4 (a sum of terms of that size):
    # float32 leaves it 0.002 off, beyond a bound of its own size (0.0015).
    contract = task_contract({"name": "y"}, task="regression")
    want = Predictions(np.array([-1.2e4, 9.0e3, -138.853, 1.5e4]), None)
    got = Predictions(want.labels + np.array([0.001, -0.0008, -0.002, 0.0015]), None)
    parity = compare(contract, want, got, 1e-4, 1e-5)
    assert parity.passed, parity.worst_row
    assert parity.scale == pytest.approx(float(np.sqrt(np.mean(want.labels**2))))
    assert parity.worst_row is not None
    assert parity.worst_row["bound"] == pytest.approx(1e-4 + 1e-5 * parity.scale)
    # Still a bound: an error that is no rounding of numbers this size fails.
    off = Predictions(want.labels + np.array([0.0, 0.0, 0.5, 0.0]), None)
    assert not compare(contract, want, off, 1e-4, 1e-5).passed
    # Probabilities are held value by value: no scale.
    classifier = task_contract({"name": "y", "classes": ["a", "b"]})
    proba = np.array([[0.3, 0.7]])
    same = Predictions(np.array(["b"]), proba)
    assert compare(classifier, same, same, 1e-4, 1e-5).scale == 0.0


def test_a_classifier_label_disagreement_is_the_worst_row() -> None:
    contract = task_contract({"name": "y", "classes": ["yes", "no"]})
    proba = np.array([[0.2, 0.8], [0.51, 0.49]])
    want = Predictions(np.array(["no", "yes"]), proba)
    got = Predictions(np.array(["no", "no"]), proba + np.array([[0.0, 0.0], [-0.02, 0.02]]))
    parity = compare(contract, want, got, 1e-5, 1e-5)
    assert not parity.passed
    assert parity.label_agreement == 0.5
    assert parity.worst_row is not None
    assert parity.worst_row["index"] == 1
    assert parity.worst_row["label"] == {"sklearn": "yes", "onnx": "no"}


def test_probability_columns_follow_the_contract_and_refuse_missing_classes() -> None:
    assert class_columns(["a", "b", "c"], ["c", "a", "b"]).tolist() == [2, 0, 1]
    assert class_columns([0, 1, 2], ["2", 0, 1]).tolist() == [2, 0, 1]  # matched by text
    with pytest.raises(ValueError, match="hold no \\['c'\\] labels"):
        class_columns(["a", "b"], ["a", "b", "c"])
    proba = np.array([[0.1, 0.2, 0.7]])
    assert in_contract_order(proba, ["a", "b", "c"], ["c", "a", "b"]).tolist() == [[0.7, 0.1, 0.2]]


def test_multiclass_scores_read_each_class_from_its_contract_column() -> None:
    classes = ["virginica", "setosa", "versicolor"]
    y = np.array(["setosa", "virginica", "versicolor", "setosa"])
    proba = np.array(
        [[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.3, 0.6, 0.1]]
    )  # columns in contract order: a perfect ranking
    m = classification_metrics(
        y, np.array(["setosa", "virginica", "versicolor", "setosa"]), proba, classes
    )
    assert m["roc_auc"] == pytest.approx(1.0)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.6, 0.6])))
    assert ovr_roc_auc(y[:2], proba[:2], classes) == pytest.approx(1.0)  # versicolor absent


def test_an_error_metric_beats_the_champion_by_being_lower_at_any_scale() -> None:
    contract = task_contract({"name": "y"}, task="regression").model_copy(
        update={"promotion": PromotionPolicy(primary_metric="mae", max_group_regression=0.05)}
    )
    parity = compare(contract, Predictions(np.ones(3), None), Predictions(np.ones(3), None), 1e-5)

    def groups(mae: float) -> dict[str, Any]:
        return {"g": {"groups": {"u": {"small": False, "mae": mae}}, "gaps": {}, "max_gap": 0.0}}

    def gates(new: float, old: float) -> dict[str, Any]:
        return evaluate_gates(
            contract,
            parity=parity,
            metrics={"mae": new},
            group_metrics=groups(new),
            baseline_metrics={"mae": 10 * old},
            champion_metrics={"mae": old},
            champion_group_metrics=groups(old),
        )

    for scale in (1e-3, 1e6):
        better = gates(0.9 * scale, 1.0 * scale)
        assert better["beats_champion"].passed
        assert better["group_regression"].passed
        worse = gates(1.1 * scale, 1.0 * scale)
        assert not worse["beats_champion"].passed
        # 10% more error on the group: a share of the champion's, over the 5% limit.
        assert not worse["group_regression"].passed
        assert "+0.1000" in worse["group_regression"].detail


def test_serving_puts_an_older_sorted_export_in_contract_order(tmp_path: Path) -> None:
    classes = ["virginica", "setosa", "versicolor"]
    contract = task_contract({"name": "y", "classes": classes})
    table = task_table(contract)
    frame = table_to_frame(contract, table)
    pipeline = build_pipeline(contract, make_estimator("classification", "linear", {"C": 1.0}, 0))
    pipeline.fit(frame, np.asarray(table.column("y").to_pylist(), dtype=object))
    registry = Registry(ArtifactStore(f"file://{tmp_path}"))
    # Exported as before this release: columns in sklearn's sorted order, none recorded.
    manifest = register_model(registry, contract, to_onnx(pipeline, contract), dataset_version="d")
    assert "probability_columns" not in (manifest.model_extra or {})
    model = LoadedModel(manifest, registry.onnx_bytes(manifest), InputSpec(contract, 512), 1)
    got = model.predict(onnx_feeds(contract, frame))  # feature names are ONNX-safe here
    columns = [list(pipeline.classes_).index(c) for c in classes]
    np.testing.assert_allclose(
        got["probabilities"], pipeline.predict_proba(frame)[:, columns], atol=1e-5
    )
    broken = manifest.model_copy(update={"probability_columns": ["setosa", "versicolor"]})
    with pytest.raises(ValueError, match="are not the contract's classes"):
        LoadedModel(broken, registry.onnx_bytes(manifest), InputSpec(contract, 512), 1)
