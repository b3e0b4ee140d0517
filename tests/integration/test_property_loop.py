"""Generated contracts and data through the whole loop, service core by service core.

Hypothesis draws a data set the way users bring them: a task (binary, multiclass with
int or string classes in any order, regression with labels from 1e-3 to 1e6), column
names as real headers write them (spaces, hyphens, dots, parentheses, non-ASCII, names
that collide once made ONNX-safe), features of every type with or without nulls,
booleans as true/false or 0/1, integer-coded categories, 300 to 5,000 rows, with or
without an event time in one of the accepted forms. Each example then goes through
the services' public cores, without Kafka (that path has its own tests):

    JSON events -> ingestion (Ingestor) -> validation (Validator) -> training
    (TrainingCore: search, fit, evaluate, export, parity, register, promote) ->
    serving (DataPlane + gRPC server in-process, called through tritonclient in both
    input styles) -> predictions -> monitoring (MonitoringCore) -> feedback -> live metric

and the served outputs must equal the registered pipeline's (the version's own fit,
repeated from its manifest as ``flywheel reproduce`` does): labels exactly,
probabilities and regression values within float32 precision.

``make test`` runs a few derandomized examples per task; ``make test-property`` adds
the slow variant with many more (random) examples.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
import tritonclient.grpc as triton
import yaml
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.ingestion.core import Ingestor
from services.ingestion.metrics import IngestionMetrics
from services.monitoring.core import Limits, MonitoringCore
from services.monitoring.join import LabelJoin
from services.monitoring.metrics import MonitoringMetrics
from services.monitoring.predlog import PredictionLog
from services.serving.dataplane import DataPlane
from services.serving.events import PredictionPublisher
from services.serving.grpc.server import GrpcServer
from services.serving.metrics import ServingMetrics
from services.serving.repository import ModelRepository
from services.serving.settings import ServingSettings
from services.training.core import TrainingCore
from services.training.evaluation import sklearn_predictions
from services.training.metrics import TrainingMetrics
from services.training.parity import bound
from services.training.trainer import TrainConfig, fit, prepare
from services.validation.core import Validator
from services.validation.metrics import ValidationMetrics
from shared import topics
from shared.contract import Contract, load_contract
from shared.datasets import DatasetCatalog
from shared.events import DatasetValidated, Deployment, Event, Feedback, PredictionGroup
from shared.features import as_served, to_frame
from shared.registry import ModelManifest, Parity, Registry
from shared.store import ArtifactStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

LOG = structlog.get_logger("property-loop")
FAST = TrainConfig(search_budget_s=0.5, cv_folds=2, importance_rows=300, importance_repeats=1)
SERVED_ROWS = 200
"""Rows of each example sent to serving (in each input style)."""
KINDS = {
    "binary": (0, 0),
    "multiclass-int": (0, 0),
    "multiclass-str": (0, 0),
    "regression-small": (-3, 0),
    "regression-large": (3, 6),
}
"""Each task, with the decimal exponent range of its label scale (regression: 1e-3..1e6)."""

# --- what users bring: names, values, time forms -------------------------------------------

HEADERS = (
    "dew point",
    "sea-level_pressure",
    "sepal length (cm)",
    "petal.width",
    "température",
    "湿度",
    "wind speed (km/h)",
    "Ölpreis €",
    "a b",
    "a-b",
    "a.b",
    "1st reading",
    "label",
    "probabilities",
    "variable",
    " padded ",
    "x",
)
"""Real-world header shapes, including ones that collide once made ONNX-safe (``a b``,
``a-b``, ``a.b``) or equal the graph's output names."""
ALPHABET = "abcxyzABZ019 _-.()/%éüßλж中€"
NAME = st.one_of(st.sampled_from(HEADERS), st.text(ALPHABET, min_size=1, max_size=12))
NOT_NAMES = {"input"}
"""``input`` is the 2-D request tensor's name in OIP; a feature cannot also be called so."""
VALUE_ALPHABET = "abcxyzABZ _-()/%éüßλж中€"
"""No digits: a vocabulary of numeric-looking strings (``1``, ``01``) is sent by value in
the 2-D tensor, where ``1`` and ``01`` are the same number."""
VALUE = st.one_of(
    st.sampled_from(["setosa", "Iris-virginica", "no", "yes", "40K - 60K €", "ß", "中文", " "]),
    st.text(VALUE_ALPHABET, min_size=1, max_size=8),
)
COLUMN_KINDS = ("float", "int", "category", "category-int", "bool")
TIME_FORMS = ("iso-z", "iso-naive", "iso-offset", "date", "epoch-s", "epoch-ms")
START = datetime(2021, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Column:
    """One generated feature."""

    name: str
    type: str
    nullable: bool
    values: list[Any] | None = None
    """Category vocabulary as the data writes it (strings, or ints for coded categories)."""
    scale: float = 1.0
    offset: float = 0.0
    bounded: bool = False
    """Declare ``min``/``max`` in the contract."""
    informative: bool = True


@dataclass(frozen=True)
class Scenario:
    """One generated data set and its contract."""

    kind: str
    classes: list[Any] | None
    label_scale: float
    columns: list[Column]
    label: str
    id: str
    time: str | None
    time_form: str
    int_ids: bool
    bools_as_ints: bool
    rows: int
    seed: int
    group: str | None

    @property
    def task(self) -> str:
        return "regression" if self.kind == "regression" else "classification"


@st.composite
def scenarios(draw: st.DrawFn, kind: str, max_rows: int) -> Scenario:
    """A contract and data set of ``kind``."""
    # One feature of every type (in any order), plus up to two more of any type.
    kinds = draw(st.permutations(COLUMN_KINDS))
    kinds += draw(st.lists(st.sampled_from(COLUMN_KINDS), max_size=2))
    n_features = len(kinds)
    names = draw(
        st.lists(
            NAME.filter(lambda n: n not in NOT_NAMES),
            min_size=n_features + 3,
            max_size=n_features + 3,
            unique=True,
        )
    )
    label, id_name, time_name, *feature_names = names
    columns = [draw(columns_of(name, k)) for name, k in zip(feature_names, kinds, strict=True)]
    group = None
    categories = [c for c in columns if c.type == "category"]
    if categories and draw(st.booleans()):
        # A fairness slice with no effect on the label (its gaps are only noise).
        chosen = categories[0]
        columns[columns.index(chosen)] = Column(**{**chosen.__dict__, "informative": False})
        group = chosen.name
    classes: list[Any] | None = None
    task = "regression" if kind.startswith("regression") else kind
    if task == "binary":
        pool = draw(st.sampled_from([[0, 1], [1, 0], ["no", "yes"], ["oui", "non"]]))
        classes = list(pool)
    elif task == "multiclass-int":
        classes = draw(st.lists(st.integers(-5, 50), min_size=3, max_size=5, unique=True))
    elif task == "multiclass-str":
        classes = draw(st.lists(VALUE, min_size=3, max_size=5, unique=True))
    if classes is not None and len(classes) > 2:
        # Never sorted, neither by value nor as text: the contract's order is the model's.
        classes = draw(st.permutations(classes).filter(_unsorted))
    return Scenario(
        kind=task,
        classes=classes,
        label_scale=10 ** draw(st.floats(*KINDS[kind])),
        columns=columns,
        label=label,
        id=id_name,
        time=draw(st.sampled_from([time_name, None])),
        time_form=draw(st.sampled_from(TIME_FORMS)),
        int_ids=draw(st.booleans()),
        bools_as_ints=draw(st.booleans()),
        rows=draw(st.integers(300, max_rows)),
        seed=draw(st.integers(0, 2**31 - 1)),
        group=group,
    )


def _unsorted(classes: list[Any]) -> bool:
    return classes not in (sorted(classes), sorted(classes, key=str))


@st.composite
def columns_of(draw: st.DrawFn, name: str, kind: str) -> Column:
    nullable = draw(st.booleans())
    if kind == "category":
        values: list[Any] = draw(st.lists(VALUE, min_size=2, max_size=5, unique=True))
        return Column(name, "category", nullable, values=values)
    if kind == "category-int":
        codes = draw(st.lists(st.integers(0, 99), min_size=2, max_size=6, unique=True))
        return Column(name, "category", nullable, values=codes)
    scale = 10 ** draw(st.floats(-2, 4)) if kind == "float" else float(draw(st.integers(2, 40)))
    offset = draw(st.floats(-1000, 1000)) if kind != "bool" else 0.0
    return Column(name, kind, nullable, scale=scale, offset=offset, bounded=draw(st.booleans()))


# --- data and contract -----------------------------------------------------------------------


@dataclass
class Generated:
    """A scenario's rows (as the data writes them) and its contract file."""

    scenario: Scenario
    contract: Contract
    columns: dict[str, list[Any]]
    """Feature name -> raw values (None: null)."""
    labels: list[Any]
    ids: list[Any]
    times: list[datetime] | None
    events: list[bytes] = field(default_factory=list)


def _raw_column(col: Column, rng: np.random.Generator, n: int, as_ints: bool) -> list[Any]:
    if col.type == "category":
        vocab = list(col.values or [])
        weights = rng.dirichlet(np.full(len(vocab), 4.0))
        picks = rng.choice(len(vocab), n, p=weights)
        out: list[Any] = [vocab[i] for i in picks]
    elif col.type == "bool":
        flags = rng.random(n) < rng.uniform(0.2, 0.8)
        out = [int(v) if as_ints else bool(v) for v in flags]
    elif col.type == "int":
        out = [int(v) for v in np.round(col.offset) + rng.integers(0, int(col.scale), n)]
    else:
        out = [float(v) for v in col.offset + col.scale * rng.normal(0, 1, n)]
    if col.nullable:
        for i in np.flatnonzero(rng.random(n) < 0.08):
            out[i] = None
    return out


def _effect(col: Column, raw: list[Any], rng: np.random.Generator) -> np.ndarray:
    """The column's contribution to the latent score (nulls contribute nothing)."""
    if not col.informative:
        return np.zeros(len(raw))
    if col.type == "category":
        effects = {v: rng.normal(0, 1) for v in col.values or []}
        return np.array([0.0 if v is None else effects[v] for v in raw])
    x = np.array([np.nan if v is None else float(v) for v in raw])
    std = float(np.nanstd(x)) or 1.0
    z = np.nan_to_num((x - np.nanmean(x)) / std)
    return z * rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)


def _time_value(form: str, t: datetime) -> Any:
    if form == "iso-z":
        return t.isoformat().replace("+00:00", "Z")
    if form == "iso-naive":
        return t.replace(tzinfo=None).isoformat()
    if form == "iso-offset":
        return t.astimezone(timezone(timedelta(hours=2))).isoformat()
    if form == "date":
        return t.date().isoformat()
    if form == "epoch-s":
        return int(t.timestamp())
    return int(t.timestamp() * 1000)


def contract_body(s: Scenario, columns: dict[str, list[Any]]) -> dict[str, Any]:
    """The contract a user would write for the scenario."""
    features: list[dict[str, Any]] = []
    for col in s.columns:
        spec: dict[str, Any] = {"name": col.name, "type": col.type}
        if col.values is not None:
            spec["values"] = list(col.values)
        if col.nullable:
            spec["nullable"] = True
        if col.bounded and col.type in ("float", "int"):
            present = [v for v in columns[col.name] if v is not None]
            margin = col.scale
            spec["min"] = math.floor(min(present) - margin)
            spec["max"] = math.ceil(max(present) + margin)
        features.append(spec)
    label: dict[str, Any] = {"name": s.label}
    if s.classes is not None:
        label["classes"] = list(s.classes)
    else:
        label["type"] = "float"
    body: dict[str, Any] = {
        "name": f"gen_{s.kind.replace('-', '_')}",
        "task": s.task,
        "id": s.id,
        "label": label,
        "features": features,
        "groups": [s.group] if s.group else [],
        "training": {"min_rows": 100, "min_new_rows": 100, "search_time_budget_s": 1},
        "promotion": {
            "primary_metric": "accuracy" if s.task == "classification" else "mae",
            "max_fairness_gap": 0.9,
        },
        "monitoring": {"window_rows": 2 * SERVED_ROWS, "min_labelled_rows": 10},
    }
    if s.time is not None:
        body["event_time"] = s.time
    return body


def generate(s: Scenario, folder: Path) -> Generated:
    """The scenario's rows, its contract (written as YAML and loaded) and its events."""
    rng = np.random.default_rng(s.seed)
    n = s.rows
    columns = {c.name: _raw_column(c, rng, n, s.bools_as_ints) for c in s.columns}
    latent = sum((_effect(c, columns[c.name], rng) for c in s.columns), np.zeros(n))
    latent = latent / math.sqrt(len(s.columns)) + rng.normal(0, 0.3, n)
    if s.classes is None:
        labels: list[Any] = [float(v) for v in s.label_scale * (3.0 + latent)]
    else:
        # Equal-frequency bins of the latent score, mapped to the classes in a shuffled
        # order: learnable, balanced, and unrelated to the classes' sort order.
        k = len(s.classes)
        edges = np.quantile(latent, np.linspace(0, 1, k + 1)[1:-1])
        order = rng.permutation(k)
        labels = [s.classes[order[b]] for b in np.searchsorted(edges, latent)]
    ids: list[Any] = [i * 7 + 3 if s.int_ids else f"r{i}" for i in range(n)]
    times = None
    if s.time is not None:
        step = timedelta(days=1) if s.time_form == "date" else timedelta(minutes=17)
        times = [START + step * int(i) for i in rng.permutation(n)]
    body = contract_body(s, columns)
    path = folder / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True, sort_keys=False), encoding="utf-8")
    contract = load_contract(path)
    gen = Generated(s, contract, columns, labels, ids, times)
    for i in rng.permutation(n):
        event: dict[str, Any] = {
            "dataset": contract.name,
            "event_id": ids[i],
            "features": {c.name: columns[c.name][i] for c in s.columns},
            "label": labels[i],
        }
        if times is not None:
            event["event_time"] = _time_value(s.time_form, times[i])
        gen.events.append(json.dumps(event, ensure_ascii=False).encode())
    return gen


# --- the loop, core by core --------------------------------------------------------------------


@dataclass
class Message:
    """A fetched Kafka record, as ingestion's core sees one."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


class Recorder:
    """Training's event publisher, in memory."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Event]] = []

    async def publish(self, topic: str, key: str, event: Event) -> None:
        self.sent.append((topic, event))


def ingest_validate_train(gen: Generated, store: ArtifactStore) -> tuple[ModelManifest, Recorder]:
    """Events through ingestion, validation and training; the champion's manifest.

    The first run registers the fast first candidate and then the searched model, gated
    against it: either may end as the champion (the searched one when it is no worse on
    the holdout), and each is checked as served.
    """
    contract = gen.contract
    contracts = {contract.name: contract}
    ingestor = Ingestor(
        contracts,
        store,
        IngestionMetrics(CollectorRegistry()),
        batch_rows=10_000,
        batch_seconds=3600,
        dedup_window=10_000,
    )
    chunk = 500  # ingestion fetches in chunks; several exercise its per-chunk paths
    letters = []
    for start in range(0, len(gen.events), chunk):
        part = gen.events[start : start + chunk]
        letters += ingestor.process(
            [Message(topics.DATA_EVENTS, 0, start + j, v) for j, v in enumerate(part)]
        )
    assert not letters, [(d.field, d.error) for d in letters[:3]]
    [batch] = ingestor.flush()
    assert batch.rows == gen.scenario.rows
    outcome = Validator(contracts, store, ValidationMetrics(CollectorRegistry())).handle(batch)
    assert isinstance(outcome, DatasetValidated), outcome
    assert outcome.rows == gen.scenario.rows

    recorder = Recorder()
    metrics = CollectorRegistry()
    core = TrainingCore(
        contracts, Registry(store), DatasetCatalog(store), recorder, TrainingMetrics(metrics), FAST
    )
    assert core.submit_validated(outcome, lambda: None)
    run = asyncio.run(core.run(contract.name))
    registry = Registry(store)
    assert run.outcome in {"promoted", "refused"}, (run, _gates(registry, contract.name))
    assert registry.version_numbers(contract.name) == [1, 2]
    champion = registry.aliases(contract.name)["champion"]
    assert champion is not None, (run, _gates(registry, contract.name))
    if run.outcome == "promoted":
        assert champion == 2
    else:  # the searched model lost to the fast candidate (or a fairness gate held it)
        gates = registry.get(contract.name, 2).gates
        failed = {name for name, gate in gates.items() if not gate.passed}
        # A float32 export of an honest model always meets the parity bound.
        assert failed, _gates(registry, contract.name)
        assert "parity" not in failed, _gates(registry, contract.name)
    manifest = registry.verify(contract.name, champion)
    assert manifest.parity.passed
    return manifest, recorder


def assert_within(got: np.ndarray, want: np.ndarray, parity: Parity) -> None:
    """``got`` equals ``want`` within the version's registered parity bound."""
    bounds = bound(want, parity.tolerance, parity.rtol, parity.scale)
    diff = np.abs(np.asarray(got, np.float64) - want)
    worst = int(np.argmax(diff / bounds))
    assert np.all(diff <= bounds), (
        f"{int(np.sum(diff > bounds))} of {diff.size} values beyond the parity bound; "
        f"worst: {got.flat[worst]} vs {want.flat[worst]} (bound {bounds.flat[worst]:.3g})"
    )


def _gates(registry: Registry, model: str) -> Any:
    versions = registry.version_numbers(model)
    if not versions:
        return "no version registered"
    manifest = registry.get(model, versions[-1])
    return {"estimator": manifest.estimator, **{k: g.detail for k, g in manifest.gates.items()}}


class Serving:
    """Serving's data plane and gRPC server on their own event loop in a thread.

    The prediction events it publishes are collected in :attr:`events`.
    """

    def __init__(self, contract: Contract, store: ArtifactStore):
        self.loop = asyncio.new_event_loop()
        metrics = ServingMetrics(CollectorRegistry())
        self.repository = ModelRepository(
            {contract.name: contract}, Registry(store), metrics, LOG, max_batch_size=1024
        )
        self.events: list[PredictionGroup] = []
        self.rows = 0
        self.arrived = threading.Condition()

        async def send(messages: list[Any]) -> None:
            groups = [PredictionGroup.model_validate_json(m.value) for m in messages]
            with self.arrived:
                self.events += groups
                self.rows += sum(sum(g.requests.rows) for g in groups)
                self.arrived.notify_all()

        self.publisher = PredictionPublisher(
            send,
            buffer_rows=10_000,
            batch_rows=1000,
            dropped=lambda m, n: None,
            published=lambda m, n: None,
            log=LOG,
        )
        settings = ServingSettings(grpc_host="127.0.0.1", grpc_port=0)
        self.server = GrpcServer(DataPlane(self.repository, self.publisher, metrics), settings, LOG)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def wait_rows(self, rows: int, timeout: float = 30) -> list[PredictionGroup]:
        """Every prediction event, once ``rows`` rows were published."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: self.rows >= rows, timeout), self.rows
            return list(self.events)

    def __enter__(self) -> Serving:
        self.thread.start()
        self._call(self.publisher.start())
        self._call(self.repository.load_from_registry())
        self._call(self.server.start())
        self.address = f"127.0.0.1:{self.server.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self.server.stop())
        self._call(self.publisher.stop())
        self._call(self.repository.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def matrix_request(contract: Contract, rows: dict[str, list[Any]]) -> list[triton.InferInput]:
    """One FP64 ``input`` [N, F] in contract order, encoded as the README says: a category
    carries its value when every value of its vocabulary is a number, else its index."""
    names = contract.feature_names
    matrix = np.empty((len(rows[names[0]]), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        f = contract.feature(name)
        values = rows[name]
        if f.is_numeric or all(_is_number(v) for v in f.values or []):
            matrix[:, j] = [np.nan if v is None else float(v) for v in values]
        else:
            index = {v: i for i, v in enumerate(f.values or [])}
            matrix[:, j] = [np.nan if v is None else index[str(v)] for v in values]
    tensor = triton.InferInput("input", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix)
    return [tensor]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def column_request(contract: Contract, rows: dict[str, list[Any]]) -> list[triton.InferInput]:
    """One tensor per feature, named as the contract names it."""
    out = []
    for f in contract.features:
        values = rows[f.name]
        if not f.is_numeric:
            data = np.array([b"" if v is None else str(v).encode() for v in values], dtype=object)
            dtype = "BYTES"
        elif f.type == "bool" and None not in values:
            data, dtype = np.array([bool(v) for v in values]), "BOOL"
        elif f.type == "int" and None not in values:
            data, dtype = np.array(values, dtype=np.int64), "INT64"
        else:
            data = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            dtype = "FP64"
        tensor = triton.InferInput(f.name, [len(values)], dtype)
        tensor.set_data_from_numpy(data)
        out.append(tensor)
    return out


def registered_pipeline(contract: Contract, store: ArtifactStore, manifest: ModelManifest) -> Any:
    """The version's own fit, repeated from its manifest (as ``flywheel reproduce`` does)."""
    extra = manifest.model_extra or {}
    prepared = prepare(
        contract,
        DatasetCatalog(store),
        manifest.dataset_version,
        TrainConfig(**extra["training_config"]),
    )
    return fit(contract, manifest.estimator, dict(manifest.params), manifest.seed, prepared)


def _text(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def run_loop(s: Scenario, folder: Path) -> None:
    """One scenario through every core; asserts at each hand-over."""
    note(f"scenario: {s}")
    gen = generate(s, folder)
    contract = gen.contract
    store = ArtifactStore(f"file://{folder / 'store'}")
    manifest, recorder = ingest_validate_train(gen, store)
    holdout = (manifest.model_extra or {})["holdout"]
    if gen.times is not None:
        # The holdout is the latest share by real event time.
        by_time = sorted(range(s.rows), key=lambda i: gen.times[i])  # type: ignore[index]
        assert holdout["last_id"] == str(gen.ids[by_time[-1]])
        assert holdout["first_id"] == str(gen.ids[by_time[-holdout["rows"]]])

    rng = np.random.default_rng(s.seed + 1)
    picked = sorted(rng.choice(s.rows, min(SERVED_ROWS, s.rows), replace=False))
    rows = {name: [values[i] for i in picked] for name, values in gen.columns.items()}
    truth = [gen.labels[i] for i in picked]
    # Serving takes float32 inputs: sklearn sees the same values (as the parity gate does),
    # so a float64 value that rounds across a split threshold does not count as a miss.
    expected = sklearn_predictions(
        contract,
        registered_pipeline(contract, store, manifest),
        as_served(contract, to_frame(contract, rows)),
    )

    with Serving(contract, store) as serving:
        client = triton.InferenceServerClient(serving.address)
        assert client.is_model_ready(contract.name)
        meta = client.get_model_metadata(contract.name)
        assert [t.name for t in meta.inputs] == contract.feature_names
        answers = [
            client.infer(contract.name, matrix_request(contract, rows)),
            client.infer(contract.name, column_request(contract, rows)),
        ]
        client.close()
        n = len(picked)
        # Equal within the parity bound the version was registered with (float32 ONNX):
        # |served - sklearn| <= atol + rtol * max(|sklearn|, scale).
        parity = manifest.parity
        row_of = {}
        for answer in answers:
            ids = _text(answer.as_numpy("prediction_id"))
            row_of.update({pid: i for i, pid in enumerate(ids)})
            assert answer.get_response().model_version == str(manifest.version)
            if contract.task == "regression":
                served = answer.as_numpy("prediction").astype(np.float64).ravel()
                want = expected.labels.astype(np.float64).ravel()
                assert_within(served, want, parity)
            else:
                assert expected.proba is not None
                assert _text(answer.as_numpy("label")) == _text(expected.labels)
                proba = answer.as_numpy("probabilities")
                assert_within(proba, expected.proba, parity)
                classes = [str(c) for c in contract.label.classes or []]
                argmax = [classes[j] for j in np.argmax(proba, axis=1)]
                assert argmax == _text(answer.as_numpy("label"))
        events = serving.wait_rows(2 * n)

    # Monitoring: the served rows, then their true labels, make a live metric.
    monitoring = CollectorRegistry()
    core = MonitoringCore(
        {contract.name: contract},
        Registry(store),
        DatasetCatalog(store),
        MonitoringMetrics(monitoring),
        LabelJoin(100_000, 3600),
        PredictionLog(store, flush_rows=100_000, flush_s=3600),
        LOG,
        Limits(eval_every_labels=2 * n),
    )
    core.load_aliases()
    for topic, event in recorder.sent:
        if topic == topics.MODELS_DEPLOYMENTS and isinstance(event, Deployment):
            core.on_deployment(event)
    predictions = [p for batch in events for p in batch.predictions()]
    assert len(predictions) == 2 * n
    core.on_predictions(predictions)
    assert set(row_of) == {p.id for p in predictions}
    core.on_feedback([Feedback(prediction_id=p.id, label=truth[row_of[p.id]]) for p in predictions])

    def live(metric: str) -> float | None:
        labels = {"model": contract.name, "version": str(manifest.version), "metric": metric}
        return monitoring.get_sample_value("flywheel_monitoring_live_metric", labels)

    assert live("labelled_rows") == 2 * n
    served = [p.outputs for p in predictions]
    truths = [truth[row_of[p.id]] for p in predictions]
    if contract.task == "regression":
        values = np.array([o["prediction"] for o in served], dtype=np.float64).ravel()
        mae = float(np.mean(np.abs(values - np.array(truths))))
        assert live("mae") == pytest.approx(mae, rel=1e-6)
    else:
        hits = [str(o["label"]) == str(t) for o, t in zip(served, truths, strict=True)]
        assert live("accuracy") == pytest.approx(float(np.mean(hits)))


# --- the tests ------------------------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A fresh folder per hypothesis example (function fixtures are shared across them)."""

    def make() -> Path:
        return tmp_path_factory.mktemp("example")

    return make


BOUNDED = settings(
    max_examples=2,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
@BOUNDED
def test_generated_datasets_go_round_the_loop(kind: str, data: st.DataObject, scratch: Any) -> None:
    run_loop(data.draw(scenarios(kind, max_rows=5000)), scratch())


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
@settings(
    BOUNDED,
    max_examples=15,
    derandomize=False,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
)
def test_many_generated_datasets_go_round_the_loop(
    kind: str, data: st.DataObject, scratch: Any
) -> None:
    run_loop(data.draw(scenarios(kind, max_rows=5000)), scratch())


FOUND = {
    "centred labels of 1e4": Scenario(
        kind="regression",
        classes=None,
        label_scale=10000.0,
        columns=[
            Column("petal.width", "category", False, ["setosa", "Iris-virginica"], False),
            Column("0", "category", False, [0, 1, 2, 3, 4]),
            Column("9", "int", True, None, scale=3.0),
            Column("1", "bool", False, None, scale=2.0),
            Column("0000", "float", True, None),
            Column("000", "bool", False, None, scale=2.0),
            Column("00", "float", True, None),
        ],
        label="dew point",
        id="sea-level_pressure",
        time="sepal length (cm)",
        time_form="iso-naive",
        int_ids=False,
        bools_as_ints=False,
        rows=3514,
        seed=158718,
        group="petal.width",
    ),
}
"""Examples the slow variant found, kept as they were drawn. Centred labels of 1e4: the
linear model's prediction -138.853 came out of ONNX Runtime as -138.855, 1.5x a parity
bound taken of the prediction's own size (the terms it sums are of the labels' size), so
both versions were refused and nothing served."""


@pytest.mark.parametrize("name", FOUND)
@given(data=st.data())  # run_loop notes what it checks, as hypothesis examples do
@settings(BOUNDED, max_examples=1)
def test_found_examples_go_round_the_loop(name: str, data: st.DataObject, scratch: Any) -> None:
    run_loop(FOUND[name], scratch())
