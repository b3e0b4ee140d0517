"""The transport-free core of ingestion: raw messages -> dead letters + buffered batches.

:meth:`Ingestor.process` takes one fetched chunk of messages (any objects with
``topic``, ``partition``, ``offset`` and ``value``). A clean chunk of one dataset is
parsed by Arrow's C++ JSON reader straight into columns (:mod:`services.ingestion.arrowpath`);
any other chunk is decoded and type-checked message by message in C
(:mod:`services.ingestion.fastpath`), and what that refuses goes through the column-wise
:class:`~services.ingestion.envelope.EnvelopeChecker` (which names what is wrong). It
drops duplicate ids
(:mod:`services.ingestion.dedup`) and buffers the accepted rows as Arrow tables. It
returns the dead letters to publish. :meth:`Ingestor.flush` writes one content-addressed
Parquet object per buffered dataset, logs it, and returns the ``data.batches`` events
the adapter must publish before it commits offsets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from shared.contract import Contract
from shared.events import BatchCreated, DeadLetter, PartitionOffsets, utcnow
from shared.store import ArtifactStore

from .arrowpath import ArrowDecoder
from .dedup import BatchLog, IdWindow
from .envelope import (
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    EnvelopeChecker,
    Rejection,
    build_table,
    event_time_column,
    json_lines,
    take,
)
from .fastpath import FastDecoder
from .metrics import IngestionMetrics

_VALUE = attrgetter("value")
_PARTITION = attrgetter("partition")
_OFFSET = attrgetter("offset")

UNKNOWN_DATASET = "_unknown"
"""Metric label for messages whose dataset is missing or not a known contract."""

DEFAULT_MAX_EVENT_BYTES = 512 * 1024
"""Largest data event accepted. Larger ones go to the DLQ with a prefix of their bytes:
the whole of a huge payload (base64-expanded) could exceed the broker's message limit."""
DLQ_PREFIX_BYTES = 4096
"""Bytes of an oversized event kept in its dead letter (with its size and sha256)."""


class SourceMessage(Protocol):
    """What the core needs of a consumed record (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...


@dataclass
class _Buffer:
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0


def dead_letter(
    msg: SourceMessage,
    reason: str,
    field: str,
    error: str,
    dataset: str | None = None,
    event_id: str | None = None,
) -> DeadLetter:
    """A DLQ record carrying the original bytes (UTF-8 text when decodable, else base64).

    ``reason`` ``too_large`` keeps only the first :data:`DLQ_PREFIX_BYTES` bytes, with the
    size and sha256 of the whole.
    """
    raw = msg.value or b""
    size, digest, truncated = len(raw), None, False
    if reason == "too_large":
        digest, truncated = hashlib.sha256(raw).hexdigest(), True
        raw = raw[:DLQ_PREFIX_BYTES]
    try:
        payload, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return DeadLetter(
        source_topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        dataset=dataset,
        event_id=event_id,
        field=field,
        error=f"{reason}: {error}",
        payload=payload,
        payload_encoding=encoding,
        payload_bytes=size,
        payload_truncated=truncated,
        payload_sha256=digest,
    )


def _take_any(values: list[Any] | pa.ChunkedArray, keep: list[int]) -> Any:
    """``values`` at the indices ``keep``, for a Python list or an Arrow column."""
    if isinstance(values, list):
        return take(values, keep)
    return values if len(keep) == len(values) else values.take(keep)


def dlq_reason(letter: DeadLetter) -> str:
    """The short reason of a dead letter (the prefix of its error)."""
    return letter.error.split(":", 1)[0]


class Ingestor:
    """Checks, deduplicates and batches data events.

    Args:
        contracts: contract name -> contract (the known datasets).
        store: where batches and the batch log go.
        metrics: the service's metrics.
        batch_rows: rows of one dataset that make :meth:`due` true.
        batch_seconds: age of the oldest buffered row that makes :meth:`due` true.
        dedup_window: ids remembered per dataset.
        max_event_bytes: larger messages are rejected (``too_large``) before decoding.
    """

    def __init__(
        self,
        contracts: Mapping[str, Contract],
        store: ArtifactStore,
        metrics: IngestionMetrics,
        *,
        batch_rows: int,
        batch_seconds: float,
        dedup_window: int,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ):
        self.contracts = dict(contracts)
        self.store = store
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.dedup_window = dedup_window
        self.max_event_bytes = max_event_bytes
        self.log = BatchLog(store)
        self._checkers = {name: EnvelopeChecker(c) for name, c in self.contracts.items()}
        self._arrow = ArrowDecoder(self.contracts)
        self._fast = FastDecoder(self.contracts)
        self._windows: dict[str, IdWindow] = {}
        self._buffers: dict[str, _Buffer] = {}

    # --- state ---------------------------------------------------------------------------

    def reload(self) -> list[BatchCreated]:
        """Rebuild the dedup windows from the store; the newest logged batch per dataset.

        Call at start-up and on partition assignment, with nothing buffered. The returned
        events are re-published: the newest batch may have been written but its event
        not acknowledged before a crash (consumers deduplicate by ``batch_id``).
        """
        self._windows = {}
        last: list[BatchCreated] = []
        for name in self.log.datasets():
            contract = self.contracts.get(name)
            if contract is None:
                continue
            self._windows[name] = self.log.load_window(name, contract.id, self.dedup_window)
            newest = next(self.log.newest(name), None)
            if newest is not None:
                last.append(newest)
        return last

    def window(self, dataset: str) -> IdWindow:
        """The dedup window of ``dataset``."""
        if dataset not in self._windows:
            self._windows[dataset] = IdWindow(self.dedup_window)
        return self._windows[dataset]

    @property
    def buffered_rows(self) -> int:
        """Accepted rows not flushed yet."""
        return sum(b.rows for b in self._buffers.values())

    def due(self, now: float | None = None) -> bool:
        """True when a buffer reached the row count or the time window."""
        now = time.monotonic() if now is None else now
        return any(
            b.rows >= self.batch_rows or (b.rows and now - b.since >= self.batch_seconds)
            for b in self._buffers.values()
        )

    # --- processing ----------------------------------------------------------------------

    def process(self, messages: Sequence[SourceMessage]) -> list[DeadLetter]:
        """Check and buffer ``messages``; the dead letters to publish for the bad ones."""
        now = utcnow()
        messages = list(messages)
        letters: list[DeadLetter] = []
        limit = self.max_event_bytes
        sizes = [len(m.value or b"") for m in messages]
        if max(sizes, default=0) > limit:
            # Rejected before any decoding: a huge payload costs neither parse time nor memory.
            letters = [
                dead_letter(m, "too_large", "$", f"{n} bytes > the {limit}-byte limit")
                for m, n in zip(messages, sizes, strict=True)
                if n > limit
            ]
            self._count_unknown(letters)
            messages = [m for m, n in zip(messages, sizes, strict=True) if n <= limit]
        values = list(map(_VALUE, messages))
        lines = json_lines(values)
        clean = self._arrow.decode(values, lines, now) if lines is not None else None
        if clean is not None:  # the common case: a clean chunk of one dataset
            name, arrays = clean
            self._accept(name, messages, arrays, list(range(len(messages))))
            return letters
        fast, slow_idx = self._fast.split(values, lines)
        for name, (idx, events) in fast.items():
            columns, bad_time = self._fast.columns(name, events, now)
            ok = list(range(len(idx)))
            if bad_time:  # strictly typed, but a time the rules cannot read: named below
                ok = sorted(set(ok) - set(bad_time))
                slow_idx = sorted([*slow_idx, *take(idx, bad_time)])
            self._accept(name, take(messages, idx), columns, ok)
        if not slow_idx:
            return letters
        return letters + self._process_slow(take(messages, slow_idx), now)

    def _process_slow(self, messages: list[SourceMessage], now: datetime) -> list[DeadLetter]:
        """The column-wise checker: accepts what it can, names what is wrong otherwise."""
        letters: list[DeadLetter] = []
        groups: dict[str, tuple[list[SourceMessage], list[dict[str, Any]]]] = {}
        for msg in messages:
            try:
                obj = json.loads(msg.value) if msg.value is not None else None
            except (ValueError, UnicodeDecodeError) as err:
                letters.append(dead_letter(msg, "bad_json", "$", f"not valid JSON ({err})"))
                continue
            if type(obj) is not dict:
                letters.append(
                    dead_letter(msg, "bad_json", "$", "the message is not a JSON object")
                )
                continue
            name = obj.get("dataset")
            if type(name) is not str or name not in self._checkers:
                reason = "unknown_dataset" if type(name) is str else "bad_envelope"
                letters.append(
                    dead_letter(msg, reason, "dataset", f"no contract for dataset {name!r}")
                )
                continue
            group = groups.get(name)
            if group is None:
                group = groups[name] = ([], [])
            group[0].append(msg)
            group[1].append(obj)
        self._count_unknown(letters)
        for name, (msgs, objs) in groups.items():
            columns, errors = self._checkers[name].check(objs, now)
            ids = columns[self.contracts[name].id]
            ok: list[int] = []
            for i, problem in enumerate(errors):
                if problem is None:
                    ok.append(i)
                else:
                    letters.append(self._reject(msgs[i], name, ids[i], problem))
            self._accept(name, msgs, columns, ok)
        return letters

    def _count_unknown(self, letters: list[DeadLetter]) -> None:
        """Count rejections made before the dataset was known."""
        for letter in letters:
            self.metrics.events.labels(UNKNOWN_DATASET, "rejected").inc()
            self.metrics.dlq.labels(UNKNOWN_DATASET, dlq_reason(letter)).inc()

    def _accept(
        self,
        name: str,
        msgs: list[SourceMessage],
        columns: Mapping[str, list[Any] | pa.ChunkedArray],
        ok: list[int],
    ) -> None:
        """Deduplicate the rows ``ok`` of ``columns`` (Python lists, or Arrow columns of
        every row) and buffer the new ones."""
        if not ok:
            return
        checker = self._checkers[name]
        ids = columns[checker.contract.id]
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.to_pylist()
        window = self.window(name)
        fresh = window.fresh(take(ids, ok))
        self.metrics.dedup_ids.labels(name).set(len(window))
        keep = ok if False not in fresh else [i for i, new in zip(ok, fresh, strict=True) if new]
        duplicates = len(ok) - len(keep)
        if duplicates:
            self.metrics.events.labels(name, "duplicate").inc(duplicates)
        if not keep:
            return
        self.metrics.events.labels(name, "accepted").inc(len(keep))
        kept_msgs = take(msgs, keep)
        table = build_table(
            checker.schema,
            {k: _take_any(v, keep) for k, v in columns.items()},
            kept_msgs[0].topic,
            list(map(_PARTITION, kept_msgs)),
            list(map(_OFFSET, kept_msgs)),
        )
        buf = self._buffers.get(name)
        if buf is None or not buf.rows:
            buf = self._buffers[name] = _Buffer(since=time.monotonic())
        buf.tables.append(table)
        buf.rows += table.num_rows

    def _reject(self, msg: SourceMessage, name: str, event_id: Any, err: Rejection) -> DeadLetter:
        self.metrics.events.labels(name, "rejected").inc()
        self.metrics.dlq.labels(name, err.reason).inc()
        eid = event_id if isinstance(event_id, str) else None
        return dead_letter(msg, err.reason, err.field, err.error, name, eid)

    # --- flushing ------------------------------------------------------------------------

    def flush(self) -> list[BatchCreated]:
        """Write every buffered dataset as one Parquet object and log it.

        Returns the ``data.batches`` events, to publish (and have acknowledged) before
        committing the offsets of everything processed so far.
        """
        return self.write(self.detach())

    def detach(self) -> dict[str, pa.Table]:
        """Take the buffered rows (dataset -> table) and start new, empty buffers.

        With :meth:`write` this lets the adapter write one flush in a thread while the
        event loop keeps filling the next one.
        """
        tables = {n: pa.concat_tables(b.tables) for n, b in self._buffers.items() if b.rows}
        self._buffers = {}
        return tables

    def write(self, tables: Mapping[str, pa.Table]) -> list[BatchCreated]:
        """Write detached tables as Parquet objects and log them; their batch events."""
        return [self._write(self.contracts[name], table) for name, table in tables.items()]

    def _write(self, contract: Contract, table: pa.Table) -> BatchCreated:
        sha, uri = self.store.put_parquet(f"raw/{contract.name}", table)
        times = table.column(event_time_column(contract))
        bounds = pc.min_max(times)
        offsets = (
            table.group_by([SOURCE_TOPIC, SOURCE_PARTITION])
            .aggregate([(SOURCE_OFFSET, "min"), (SOURCE_OFFSET, "max")])
            .sort_by([(SOURCE_TOPIC, "ascending"), (SOURCE_PARTITION, "ascending")])
            .to_pylist()
        )
        batch = BatchCreated(
            dataset=contract.name,
            batch_id=sha,
            uri=uri,
            rows=table.num_rows,
            sha256=sha,
            min_event_time=bounds["min"].as_py().isoformat(),
            max_event_time=bounds["max"].as_py().isoformat(),
            offsets=[
                PartitionOffsets(
                    topic=o[SOURCE_TOPIC],
                    partition=o[SOURCE_PARTITION],
                    first=o[f"{SOURCE_OFFSET}_min"],
                    last=o[f"{SOURCE_OFFSET}_max"],
                )
                for o in offsets
            ],
        )
        self.log.append(batch)
        self.metrics.batches.labels(contract.name).inc()
        self.metrics.batch_rows.observe(table.num_rows)
        return batch
