"""The data contract: one YAML file per model, the source every service derives from.

Loading validates the file and reports mistakes as ``<file>: <field>: <what is wrong>``.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

FeatureType = Literal["float", "int", "category", "bool"]


def check_name(name: str) -> str:
    """A column name as the data spells it: any text but empty or with control characters."""
    if not name:
        raise ValueError("a name must not be empty")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise ValueError(f"{name!r} has a control character ({ch!r})")
    return name


Name = Annotated[str, AfterValidator(check_name)]
"""A feature, label, id or event-time column name, exactly as written in the data (spaces,
hyphens, dots, parentheses, non-ASCII); ONNX gets safe names of its own
(:func:`shared.features.onnx_input_names`)."""


class ContractError(ValueError):
    """A contract file that cannot be used; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """One input feature."""

    name: Name
    type: FeatureType
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None
    """Allowed values of a category (kept as strings: ``1`` and ``"1"`` are the same)."""
    nullable: bool = False
    """A null (or, in a data event, an absent key) is allowed: NaN to the model for a
    numeric feature, :data:`shared.features.MISSING_CATEGORY` for a category."""
    description: str | None = None
    owner: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _values_as_strings(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("values"), list):
            data = {**data, "values": [str(v) for v in data["values"]]}
        return data

    @model_validator(mode="after")
    def _check(self) -> Feature:
        if self.type == "category":
            if not self.values:
                raise ValueError("a category feature needs a non-empty 'values' list")
            if len(set(self.values)) != len(self.values):
                raise ValueError("'values' has duplicates")
            if self.min is not None or self.max is not None:
                raise ValueError("'min'/'max' apply to numeric features, not categories")
        elif self.values is not None:
            raise ValueError(f"'values' applies to category features, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self

    @property
    def is_numeric(self) -> bool:
        """Float, int and bool features are numeric to the model; categories are not."""
        return self.type != "category"


class Label(_Strict):
    """The target: classes for classification, a numeric type for regression."""

    name: Name
    classes: list[int | str] | None = None
    type: Literal["float", "int"] | None = None


class TrainingPolicy(_Strict):
    """When training runs."""

    min_rows: int = Field(1000, ge=10)
    """Rows needed for a first model."""
    min_new_rows: int = Field(10_000, ge=1)
    """New rows since the last model that trigger a retrain."""
    retrain_on_drift: bool = True
    """Retrain when validation reports drift on an accepted batch."""
    schedule_seconds: float | None = Field(None, gt=0)
    """Periodic retraining interval; none by default."""
    holdout_fraction: float = Field(0.2, gt=0, lt=0.9)
    """Latest share of event time kept out for the honest holdout."""
    search_time_budget_s: float = Field(60.0, gt=0)
    """Time box of the hyperparameter search: no candidate starts after it, nor one
    expected (from its family's last run) to end past it."""
    search_max_rows: int | None = Field(10_000, ge=100)
    """Cross-validate the search's candidates on at most this many training rows (a
    seeded, label-stratified sample); the chosen candidate is then refit on every
    training row. None: search on every row. 10,000 is FLAML's first sample size; on the
    census data (55,028 training rows) it chose the same model as a search on every row
    in under a third of the time."""
    seed: int = 42
    fast_first: bool = True
    """When the model has no champion yet, a run first registers a cheap candidate so a
    model answers within seconds: the search's first gradient-boosting grid point, not
    cross-validated, fit on the latest 20,000 training rows, evaluated on the same
    time-ordered holdout and held to the same gates (parity, beats the trivial baseline,
    fairness) as any version, its run record marked ``candidate: fast_first``. The
    time-boxed search then runs on the same dataset version and its winner is
    registered as the next version, gated against the fast candidate (now the champion)
    and deployed by ``promotion.strategy``: promoted, canaried or shadowed. Under
    ``manual`` neither serves until ``flywheel approve`` and ``flywheel promote``.
    False: the first run registers only the searched model."""


PRIMARY_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("roc_auc", "accuracy", "f1", "log_loss"),
    "regression": ("r2", "mae", "rmse"),
}
"""The metrics a contract may name as ``promotion.primary_metric``, by task (default first)."""


class PromotionPolicy(_Strict):
    """Gates a challenger must pass, and how it is deployed."""

    strategy: Literal["direct", "shadow", "canary", "manual"] = "direct"
    canary_percent: float = Field(10.0, gt=0, le=100)
    primary_metric: str = "roc_auc"
    """The metric that ranks candidates and decides gates: ``roc_auc``, ``accuracy``,
    ``f1`` or ``log_loss`` for classification (default ``roc_auc``; one-vs-rest macro
    for multiclass), ``r2``, ``mae`` or ``rmse`` for regression (default ``r2``)."""
    min_improvement: float = 0.0
    """The challenger must beat the champion by at least this on the primary metric
    (in the metric's units: label units for ``mae``/``rmse``)."""
    max_fairness_gap: float = Field(0.25, ge=0)
    """Largest allowed gap between groups. Classification: of the selection rate, FPR
    and FNR of the positive class (binary: the contract's last class), or of each class
    one-vs-rest (multiclass). Regression: of the relative MAE, a group's MAE divided by
    the holdout's mean absolute deviation of the label (the MAE of always predicting
    the mean), so the limit is scale-free."""
    max_group_regression: float = Field(0.05, ge=0)
    """Largest allowed drop of the primary metric on any group versus the champion
    (for ``mae``/``rmse``: the growth of the group's error as a share of the champion's)."""
    parity_atol: float = Field(1e-4, gt=0)
    """Absolute part of the sklearn/onnxruntime parity tolerance: every output (class
    probability or regression value) must satisfy ``|a - b| <= atol + rtol * max(|b|,
    scale)`` (``b`` the sklearn value; ``scale`` 0 for probabilities, for a regressor the
    root mean square of its holdout predictions). ``parity_tolerance``, its former name,
    is still read.
    1e-4 by default: the graph's constants (a scaler's means, say) are float32 too, so a
    feature far from zero with a small spread (a year, a latitude) moves probabilities by
    ~1e-5 on its own; skl2onnx's own tests compare float32 outputs to 4-5 decimals."""
    parity_rtol: float = Field(1e-5, ge=0)
    """Relative part of the parity tolerance: ONNX Runtime computes in float32, whose
    rounding grows with the value (a regression output in the millions is off by
    ~0.1), so an absolute bound alone refuses models of large labels. It is taken of at
    least the predictions' root mean square: a small prediction of a model of large
    labels is a sum of large terms and carries their rounding."""

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "parity_tolerance" in data:
            if "parity_atol" in data:
                raise ValueError("parity_tolerance is the former name of parity_atol: give one")
            data = {**data, "parity_atol": data["parity_tolerance"]}
            del data["parity_tolerance"]
        return data


class ValidationPolicy(_Strict):
    """Thresholds of the validation service."""

    max_row_failure_rate: float = Field(0.05, ge=0, le=1)
    """Share of failing rows above which a batch is quarantined."""
    max_outlier_share: float = Field(0.05, ge=0, le=1)
    """Share of values beyond the reference's robust range allowed per numeric feature."""
    psi_threshold: float = Field(0.2, ge=0)
    ks_threshold: float = Field(0.1, ge=0)
    js_threshold: float = Field(0.1, ge=0)
    wasserstein_threshold: float = Field(0.1, ge=0)
    """Normed Wasserstein distance (numeric features) at or above which a feature
    drifted; 0.1 is Evidently's default."""
    min_label_share: float = Field(0.01, ge=0, le=1)
    """Smallest share any class may have in a batch before label balance fails."""


class MonitoringPolicy(_Strict):
    """Thresholds of the monitoring service's actions."""

    window_rows: int = Field(2000, ge=10)
    """Rows per sliding window for live quality and drift."""
    min_labelled_rows: int = Field(200, ge=1)
    """Labelled rows needed before quality can trigger an action."""
    min_quality: float | None = None
    """Retrain when the live primary metric falls below this (none: no quality trigger)."""
    drift_psi_threshold: float = Field(0.2, ge=0)
    drift_wasserstein_threshold: float = Field(0.1, ge=0)
    """A served window drifted when a feature's PSI is above ``drift_psi_threshold`` or
    its normed Wasserstein distance (numeric features) at or above this."""
    rollback_margin: float = Field(0.02, ge=0)
    """Roll back when a new champion or canary is worse than the previous one by this."""
    cooldown_s: float = Field(300.0, ge=0)
    """Quiet time after an action before the same action may fire again."""
    consecutive_windows: int = Field(2, ge=1)
    """Windows in a row above threshold before acting (hysteresis)."""


class Contract(_Strict):
    """A data contract: the model's features, label, groups and policies."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    task: Literal["classification", "regression"]
    id: Name
    """Event id field, used to deduplicate."""
    event_time: Name | None = None
    """Event time field: the column of batch tables holding each event's ``event_time``,
    parsed to a UTC timestamp by :mod:`shared.eventtime` (ISO-8601 with or without a
    zone, dates, four-digit years, epoch seconds or milliseconds); an event without one
    gets its ingestion time. Training holds out the latest share by this time and
    cross-validates on time-ordered folds; without it the holdout is not future data."""
    label: Label
    features: list[Feature] = Field(min_length=1)
    groups: list[Name] = Field(default_factory=list)
    description: str | None = None
    owner: str | None = None
    training: TrainingPolicy = Field(default_factory=TrainingPolicy)
    promotion: PromotionPolicy = Field(default_factory=PromotionPolicy)
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    monitoring: MonitoringPolicy = Field(default_factory=MonitoringPolicy)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        # The default primary metric depends on the task: R2 (scale-free) for regression.
        if isinstance(data, dict) and data.get("task") == "regression":
            promotion = data.get("promotion") or {}
            if isinstance(promotion, dict) and "primary_metric" not in promotion:
                data = {**data, "promotion": {**promotion, "primary_metric": "r2"}}
        return data

    @model_validator(mode="after")
    def _check(self) -> Contract:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features: duplicate names {dupes}")
        for group in self.groups:
            if group not in names:
                raise ValueError(f"groups: {group!r} is not a feature")
        if self.label.name in names:
            raise ValueError(f"label: {self.label.name!r} is also a feature")
        # Batches hold the id, event time, features and label as columns named as they are.
        roles = [("id", self.id), ("event_time", self.event_time)]
        for role, column in roles:
            if column in names or column == self.label.name:
                raise ValueError(f"{role}: {column!r} is also a feature or the label")
        if self.id == self.event_time:
            raise ValueError(f"event_time: {self.id!r} is also the id")
        if self.task == "classification":
            if not self.label.classes or len(self.label.classes) < 2:
                raise ValueError("label.classes: classification needs at least two classes")
        elif self.label.classes:
            raise ValueError("label.classes: a regression label has no classes")
        metric, known = self.promotion.primary_metric, PRIMARY_METRICS[self.task]
        if metric not in known:
            raise ValueError(
                f"promotion.primary_metric: {metric!r} is not a {self.task} metric "
                f"(one of {', '.join(known)})"
            )
        return self

    @property
    def feature_names(self) -> list[str]:
        """Feature names in contract order (the column order of a 2-D input tensor)."""
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        """The feature called ``name``; KeyError if the contract has none."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


def _format_error(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        # Our own validators' messages are the "what"; pydantic prefixes them.
        lines.append(f"{path}: {loc}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_contract(data: Any, source: str | Path = "<contract>") -> Contract:
    """Validate an already-parsed contract mapping."""
    path = Path(source)
    if not isinstance(data, dict):
        raise ContractError(f"{path}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return Contract.model_validate(data)
    except ValidationError as err:
        raise ContractError(_format_error(path, err)) from None


def load_contract(path: str | Path) -> Contract:
    """Load and validate one contract file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ContractError(f"{path}: cannot read: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ContractError(f"{path}: (yaml): {err}") from None
    contract = parse_contract(data, path)
    if contract.name != path.stem:
        raise ContractError(f"{path}: name: {contract.name!r} must match the file name")
    return contract


def load_contracts(folder: str | Path) -> dict[str, Contract]:
    """Load every ``*.yaml``/``*.yml`` in ``folder``, keyed by contract name."""
    root = Path(folder)
    if not root.is_dir():
        raise ContractError(f"{root}: not a folder of contracts")
    files = sorted([*root.glob("*.yaml"), *root.glob("*.yml")])
    contracts = [load_contract(f) for f in files]
    return {c.name: c for c in contracts}
