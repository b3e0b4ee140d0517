"""Dataset versions in the artifact store: immutable manifests listing their batches.

Layout (keys below the store root)::

    datasets/<name>/versions/<id>.json     the manifest; id = sha256 of its content
    datasets/<name>/log/<seq>.json         append-only order of versions ({"id": ...})
    datasets/<name>/profiles/<sha>.json    reference profiles (content-addressed)

Only validation writes here; training, monitoring and the CLI read.
"""

from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from shared import eventtime
from shared.drift import Profile
from shared.events import DriftSummary, PartitionOffsets, utcnow
from shared.store import ArtifactStore, canonical_json, sha256_hex


class BatchRef(BaseModel):
    """One accepted batch inside a dataset version."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    """The raw batch's sha256 (ingestion's name for it)."""
    uri: str
    """The rows that joined the dataset (the raw batch minus rows failing row rules)."""
    sha256: str
    rows: int
    raw_uri: str
    report_uri: str
    offsets: list[PartitionOffsets] = Field(default_factory=list)
    min_event_time: str | None = None
    max_event_time: str | None = None


class DatasetVersion(BaseModel):
    """An immutable dataset version: its parent, its batches, its reference profile."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    id: str = ""
    """sha256 of the manifest without ``id`` and ``created``."""
    parent: str | None = None
    batches: list[BatchRef]
    rows: int
    profile_uri: str | None = None
    drift: DriftSummary = Field(default_factory=DriftSummary)
    created: datetime = Field(default_factory=utcnow)

    def content_id(self) -> str:
        """The id this manifest's content hashes to."""
        body = self.model_dump(mode="json", exclude={"id", "created"})
        return sha256_hex(canonical_json(body))


class DatasetCatalog:
    """Reads and (for validation) appends dataset versions.

    Args:
        store: the artifact store.
    """

    def __init__(self, store: ArtifactStore):
        self.store = store

    def add(self, version: DatasetVersion) -> DatasetVersion:
        """Write a new version (its id filled in) and append it to the dataset's log."""
        version = version.model_copy(update={"id": version.content_id()})
        key = f"datasets/{version.dataset}/versions/{version.id}.json"
        if not self.store.exists(key):
            self.store.put(key, version.model_dump_json().encode())
        if version.id not in self.ids(version.dataset):
            seq = len(self.store.list(f"datasets/{version.dataset}/log"))
            self.store.create(
                f"datasets/{version.dataset}/log/{seq:08d}.json",
                json.dumps({"id": version.id}).encode(),
            )
        return version

    def put_profile(self, dataset: str, profile: Profile) -> str:
        """Store a reference profile; its URI."""
        _, uri = self.store.put_content(
            f"datasets/{dataset}/profiles", canonical_json(profile.model_dump(mode="json")), ".json"
        )
        return uri

    def profile(self, version: DatasetVersion) -> Profile | None:
        """The reference profile of ``version``, if it has one."""
        if not version.profile_uri:
            return None
        return Profile.model_validate_json(self.store.get(version.profile_uri))

    def names(self) -> list[str]:
        """Datasets that have at least one version."""
        return sorted({k.split("/")[1] for k in self.store.list("datasets") if "/log/" in k})

    def ids(self, dataset: str) -> list[str]:
        """Version ids of ``dataset``, oldest first."""
        keys = self.store.list(f"datasets/{dataset}/log")
        return [str(self.store.get_json(k)["id"]) for k in keys]

    def get(self, dataset: str, version_id: str) -> DatasetVersion:
        """One version by id (KeyError if unknown)."""
        key = f"datasets/{dataset}/versions/{version_id}.json"
        if not self.store.exists(key):
            raise KeyError(f"{dataset} has no dataset version {version_id}")
        return DatasetVersion.model_validate_json(self.store.get(key))

    def versions(self, dataset: str) -> list[DatasetVersion]:
        """Every version of ``dataset``, oldest first."""
        return [self.get(dataset, i) for i in self.ids(dataset)]

    def latest(self, dataset: str) -> DatasetVersion | None:
        """The newest version, or None."""
        ids = self.ids(dataset)
        return self.get(dataset, ids[-1]) if ids else None

    def load_table(self, version: DatasetVersion) -> pa.Table:
        """All rows of ``version`` as one table, in batch order."""
        tables = [self.store.get_parquet(b.uri) for b in version.batches]
        return concat_batches(tables) if tables else pa.table({})


def concat_batches(tables: list[pa.Table]) -> pa.Table:
    """``tables`` as one table; a column that some batches hold as timestamps and older
    ones (written before ingestion parsed event times) as text or numbers is read as
    timestamps throughout, by :func:`shared.eventtime.to_timestamps`."""
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        stamped = {f.name for t in tables for f in t.schema if pa.types.is_timestamp(f.type)}
        if not stamped:
            raise
    fixed = []
    for table in tables:
        for name in stamped & set(table.column_names):
            index = table.column_names.index(name)
            table = table.set_column(index, name, eventtime.to_timestamps(table.column(name)))
        fixed.append(table)
    return pa.concat_tables(fixed, promote_options="default")
