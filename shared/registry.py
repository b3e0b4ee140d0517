"""The model registry in the artifact store: numbered versions, manifests, aliases.

Layout (keys below the store root)::

    models/<name>/versions/<version:06d>.json   manifest (created once; the key is the claim)
    models/<name>/onnx/<sha256>.onnx            the exported model (content-addressed)
    models/<name>/aliases/<seq:08d>.json        append-only alias history
    models/<name>/digests/<version:06d>.json    sha256 of each manifest's bytes (tamper check)
    models/<name>/runs/<run_id>.json            one training run: its search, or its failure
    models/<name>/contracts/<sha256>.json       contract snapshots a version was trained with
    models/<name>/triggers/<sha256>.json        idempotence keys of handled retrain triggers

Aliases (``champion``, ``challenger``) are derived from the history: the latest entry
for each alias wins. The same history records approvals (entries whose ``alias`` is
``approval``: who approved which version, why, and which failed gates they overrode).
One writer (training) by design; every change needs a reason. What a version's role
is (champion, canary and its share, shadow) is only ever read from this history: a
manifest is immutable and carries no deployment state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import utcnow
from shared.store import ArtifactStore, canonical_json, sha256_hex

ALIASES = ("champion", "challenger")
APPROVAL = "approval"
"""The history entry kind that records an approval (not an alias)."""


class TamperedArtifactError(ValueError):
    """An artifact's bytes do not match the sha256 its manifest records."""


class Parity(BaseModel):
    """The sklearn-vs-ONNX Runtime parity check on the holdout."""

    passed: bool
    rows: int
    label_agreement: float
    max_abs_diff: float
    tolerance: float
    """The absolute tolerance ``atol``."""
    rtol: float = 0.0
    """The relative tolerance: every output passes when ``|onnx - sklearn| <= tolerance +
    rtol * max(|sklearn|, scale)`` (0 in versions registered before it existed)."""
    scale: float = 0.0
    """The magnitude ``rtol`` is taken of at least: for a regressor the root mean square
    of sklearn's predictions on the holdout (float32 rounding follows the size of the
    terms a prediction sums, the labels' size, even where they cancel near zero); 0 for a
    classifier and in versions registered before it existed."""
    worst_row: dict[str, Any] | None = None
    """The holdout row nearest to (or furthest beyond) that bound: ``index`` (its
    position in the holdout), ``sklearn`` and ``onnx`` (the values compared; for a
    classifier the probabilities of ``class`` and the two ``label`` predictions),
    ``bound`` and ``ratio`` (difference / bound, above 1 = failed). None: no rows."""


class Gate(BaseModel):
    """One promotion gate's outcome."""

    passed: bool
    detail: str


class ModelManifest(BaseModel):
    """Everything needed to trust, explain and reproduce a model version.

    Training may add fields (``extra="allow"``); these are the ones other services read.
    """

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str
    version: int
    created: datetime = Field(default_factory=utcnow)
    task: str
    dataset_version: str
    code_version: str
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int
    library_versions: dict[str, str] = Field(default_factory=dict)
    features: list[str]
    onnx_inputs: dict[str, str] = Field(default_factory=dict)
    """Feature name -> ONNX graph input name (:func:`shared.features.onnx_input_names`);
    empty in manifests written before names were mapped, whose inputs are the names."""
    classes: list[Any] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    group_metrics: dict[str, Any] = Field(default_factory=dict)
    parity: Parity
    onnx_uri: str
    onnx_sha256: str
    training_time_s: float
    reason: str
    gates: dict[str, Gate] = Field(default_factory=dict)
    contract_sha256: str | None = None
    """sha256 of the contract snapshot the version was trained with (None: older versions)."""
    contract_uri: str | None = None
    """Where that snapshot is stored (``models/<name>/contracts/<sha256>.json``)."""


class AliasChange(BaseModel):
    """One entry of the append-only alias history."""

    model_config = ConfigDict(frozen=True)

    seq: int
    alias: str
    version: int | None
    """The version the alias points at afterwards (None: removed)."""
    previous: int | None
    actor: str
    reason: str
    at: datetime = Field(default_factory=utcnow)
    detail: dict[str, Any] = Field(default_factory=dict)
    """e.g. ``{"mode": "canary", "canary_percent": 10}`` for a challenger, or
    ``{"overrides": ["fairness_gap"]}`` for an approval."""


@dataclass(frozen=True, slots=True)
class AliasState:
    """What the registry says serves, after history entry ``seq`` (-1: empty history)."""

    champion: int | None = None
    challenger: int | None = None
    mode: Literal["shadow", "canary"] | None = None
    canary_percent: float | None = None
    seq: int = -1

    @staticmethod
    def of(history: list[AliasChange]) -> AliasState:
        """The state after every entry of ``history`` (oldest first)."""
        champion = challenger = None
        mode: Literal["shadow", "canary"] | None = None
        percent: float | None = None
        for change in history:
            if change.alias == "champion":
                champion = change.version
            elif change.alias == "challenger":
                challenger = change.version
                raw = change.detail.get("mode")
                mode = ("canary" if raw == "canary" else "shadow") if challenger else None
                share = change.detail.get("canary_percent")
                percent = float(share) if mode == "canary" and share is not None else None
        return AliasState(champion, challenger, mode, percent, len(history) - 1)


class Registry:
    """Reads (everyone) and writes (training) the registry.

    Args:
        store: the artifact store.
    """

    def __init__(self, store: ArtifactStore):
        self.store = store

    # --- reading ---------------------------------------------------------------------

    def models(self) -> list[str]:
        """Models with at least one version."""
        return sorted({k.split("/")[1] for k in self.store.list("models") if "/versions/" in k})

    def tried_models(self) -> list[str]:
        """Models with at least one version or training run (a first run may have failed)."""
        keys = self.store.list("models")
        return sorted({k.split("/")[1] for k in keys if "/versions/" in k or "/runs/" in k})

    def version_numbers(self, model: str) -> list[int]:
        """Registered versions of ``model``, ascending."""
        keys = self.store.list(f"models/{model}/versions")
        return sorted(int(k.rsplit("/", 1)[1].removesuffix(".json")) for k in keys)

    def get(self, model: str, version: int) -> ModelManifest:
        """The manifest of one version (KeyError if unknown)."""
        key = f"models/{model}/versions/{version:06d}.json"
        if not self.store.exists(key):
            raise KeyError(f"{model} has no version {version}")
        return ModelManifest.model_validate_json(self.store.get(key))

    def versions(self, model: str) -> list[ModelManifest]:
        """Every manifest of ``model``, oldest first."""
        return [self.get(model, v) for v in self.version_numbers(model)]

    def onnx_bytes(self, manifest: ModelManifest) -> bytes:
        """The model's ONNX bytes, verified against the manifest's sha256."""
        data = self.store.get(manifest.onnx_uri)
        if sha256_hex(data) != manifest.onnx_sha256:
            raise TamperedArtifactError(
                f"{manifest.model} v{manifest.version}: ONNX sha256 {sha256_hex(data)[:12]} "
                f"does not match the manifest's {manifest.onnx_sha256[:12]}"
            )
        return data

    def verify(self, model: str, version: int) -> ModelManifest:
        """The manifest of a version after checking it and its ONNX were not altered.

        Raises :class:`TamperedArtifactError` when the manifest's bytes differ from the
        digest recorded at registration, when its ONNX is not the content its
        content-addressed name and sha256 say, or KeyError for an unknown version.
        """
        return self.verified(model, version)[0]

    def verified(self, model: str, version: int) -> tuple[ModelManifest, bytes]:
        """The manifest and ONNX bytes of a version, checked as :meth:`verify` does
        (the ONNX is read once, for loaders that need its bytes)."""
        manifest = self.get(model, version)
        data = self.store.get(f"models/{model}/versions/{version:06d}.json")
        digest_key = f"models/{model}/digests/{version:06d}.json"
        if self.store.exists(digest_key):
            recorded = str(self.store.get_json(digest_key)["sha256"])
            if sha256_hex(data) != recorded:
                raise TamperedArtifactError(
                    f"{model} v{version}: the manifest changed after registration "
                    f"(sha256 {sha256_hex(data)[:12]}, recorded {recorded[:12]})"
                )
        name = manifest.onnx_uri.rsplit("/", 1)[-1].removesuffix(".onnx")
        if name != manifest.onnx_sha256:
            raise TamperedArtifactError(
                f"{model} v{version}: onnx_sha256 {manifest.onnx_sha256[:12]} does not name "
                f"the stored object {name[:12]}"
            )
        return manifest, self.onnx_bytes(manifest)

    def history(self, model: str) -> list[AliasChange]:
        """The alias history of ``model``, oldest first."""
        keys = self.store.list(f"models/{model}/aliases")
        return [AliasChange.model_validate_json(self.store.get(k)) for k in keys]

    def aliases(self, model: str) -> dict[str, int | None]:
        """Current alias -> version (None when unset)."""
        current: dict[str, int | None] = dict.fromkeys(ALIASES)
        for change in self.history(model):
            if change.alias in current:
                current[change.alias] = change.version
        return current

    def state(self, model: str, upto: int | None = None) -> AliasState:
        """Champion, challenger, its mode and canary share after entry ``upto`` (default:
        the whole history)."""
        history = self.history(model)
        return AliasState.of(history if upto is None else history[: upto + 1])

    def approvals(self, model: str, version: int) -> list[AliasChange]:
        """The approvals recorded for one version, oldest first."""
        return [c for c in self.history(model) if c.alias == APPROVAL and c.version == version]

    def previous_champion(self, model: str) -> int | None:
        """The champion before the current one (what a rollback returns to), or None."""
        current = self.aliases(model)["champion"]
        for change in reversed(self.history(model)):
            if (
                change.alias == "champion"
                and change.version == current
                and change.previous is not None
                and change.previous != current
            ):
                return change.previous
        return None

    def alias_detail(self, model: str, alias: str) -> dict[str, Any]:
        """The ``detail`` of the latest change of ``alias`` (e.g. canary share)."""
        for change in reversed(self.history(model)):
            if change.alias == alias:
                return dict(change.detail)
        return {}

    def runs(self, model: str) -> list[dict[str, Any]]:
        """The recorded training runs of ``model`` (each with its candidates), oldest first."""
        keys = self.store.list(f"models/{model}/runs")
        return [dict(self.store.get_json(k)) for k in keys]

    def last_run(self, model: str) -> dict[str, Any] | None:
        """The newest run record of ``model`` (completed or failed), or None."""
        runs = self.runs(model)
        return max(runs, key=lambda r: str(r.get("created", ""))) if runs else None

    def triggers(self, model: str) -> list[dict[str, Any]]:
        """Every handled or waiting trigger record of ``model``."""
        return [dict(self.store.get_json(k)) for k in self.store.list(f"models/{model}/triggers")]

    def contract_snapshot(self, manifest: ModelManifest) -> dict[str, Any] | None:
        """The contract a version was trained with, checked against its sha256 (None:
        registered before snapshots were kept)."""
        if manifest.contract_uri is None or manifest.contract_sha256 is None:
            return None
        data = self.store.get(manifest.contract_uri)
        if sha256_hex(data) != manifest.contract_sha256:
            raise TamperedArtifactError(
                f"{manifest.model} v{manifest.version}: contract snapshot sha256 "
                f"{sha256_hex(data)[:12]} does not match the manifest's "
                f"{manifest.contract_sha256[:12]}"
            )
        snapshot: dict[str, Any] = json.loads(data)
        return snapshot

    def manifest_uri(self, model: str, version: int) -> str:
        """The URI of a version's manifest."""
        return self.store.uri_for(f"models/{model}/versions/{version:06d}.json")

    def has_trigger(self, model: str, key: str) -> bool:
        """True when the trigger ``key`` (a sha256 hex digest) was already handled."""
        return self.store.exists(f"models/{model}/triggers/{key}.json")

    def champion(self, model: str) -> ModelManifest | None:
        """The champion's manifest, or None."""
        version = self.aliases(model)["champion"]
        return self.get(model, version) if version is not None else None

    # --- writing (training only) -----------------------------------------------------

    def put_onnx(self, model: str, data: bytes) -> tuple[str, str]:
        """Store ONNX bytes; returns (sha256, uri)."""
        return self.store.put_content(f"models/{model}/onnx", data, ".onnx")

    def put_contract(self, model: str, snapshot: dict[str, Any]) -> tuple[str, str]:
        """Store a contract snapshot (canonical JSON, content-addressed); (sha256, uri)."""
        return self.store.put_content(
            f"models/{model}/contracts", canonical_json(snapshot), ".json"
        )

    def register(self, manifest: ModelManifest) -> ModelManifest:
        """Write a new version's manifest; FileExistsError if the number is taken."""
        if not manifest.reason.strip():
            raise ValueError("a model version needs the reason it was trained")
        key = f"models/{manifest.model}/versions/{manifest.version:06d}.json"
        data = manifest.model_dump_json(indent=2).encode()
        self.store.create(key, data)
        self.store.put(
            f"models/{manifest.model}/digests/{manifest.version:06d}.json",
            canonical_json({"version": manifest.version, "sha256": sha256_hex(data)}),
        )
        return manifest

    def put_run(self, model: str, run_id: str, record: dict[str, Any]) -> str:
        """Store one training run's record (search candidates, timings); its URI."""
        return self.store.create(f"models/{model}/runs/{run_id}.json", canonical_json(record))

    def put_trigger(self, model: str, key: str, record: dict[str, Any]) -> str:
        """Remember that the trigger ``key`` was handled (the first record wins on replay)."""
        path = f"models/{model}/triggers/{key}.json"
        if self.store.exists(path):
            return self.store.uri_for(path)
        return self.store.create(path, canonical_json(record))

    def next_version(self, model: str) -> int:
        """The number the next registered version gets."""
        numbers = self.version_numbers(model)
        return (numbers[-1] + 1) if numbers else 1

    def set_alias(
        self,
        model: str,
        alias: str,
        version: int | None,
        *,
        actor: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> AliasChange:
        """Point ``alias`` at ``version`` (None removes it); appended to the history."""
        if alias not in ALIASES:
            raise ValueError(f"unknown alias {alias!r}; expected one of {ALIASES}")
        if not reason.strip():
            raise ValueError("an alias change needs a reason")
        if not actor.strip():
            raise ValueError("an alias change needs an actor")
        if version is not None:
            self.get(model, version)  # must exist
        return self._append(
            model, alias, version, self.aliases(model)[alias], actor, reason, detail
        )

    def approve(
        self,
        model: str,
        version: int,
        *,
        actor: str,
        reason: str,
        overrides: list[str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AliasChange:
        """Record an approval of ``version`` (and the failed gates it overrides)."""
        if not reason.strip():
            raise ValueError("an approval needs a reason")
        if not actor.strip():
            raise ValueError("an approval needs an actor")
        self.get(model, version)  # must exist
        body = dict(detail or {}) | {"overrides": sorted(set(overrides or []))}
        return self._append(model, APPROVAL, version, None, actor, reason, body)

    def _append(
        self,
        model: str,
        alias: str,
        version: int | None,
        previous: int | None,
        actor: str,
        reason: str,
        detail: dict[str, Any] | None,
    ) -> AliasChange:
        change = AliasChange(
            seq=len(self.store.list(f"models/{model}/aliases")),
            alias=alias,
            version=version,
            previous=previous,
            actor=actor,
            reason=reason,
            detail=detail or {},
        )
        # create() refuses an existing key: two writers can never both claim one seq.
        self.store.create(
            f"models/{model}/aliases/{change.seq:08d}.json", change.model_dump_json().encode()
        )
        return change
