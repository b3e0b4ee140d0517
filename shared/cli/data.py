"""``flywheel publish``, ``flywheel datasets`` and ``flywheel dlq``: data in, and what became of it.

:func:`rows_to_events` is the one row -> data event mapping (the demo and the tests
publish through it too): the contract's ``id`` column becomes ``event_id``, its
``event_time`` column ``event_time`` (timestamps as ISO strings), features keep their
names (dictionary-encoded categories become their string values) and the label column
becomes ``label``, optionally joined in from a separate labels file.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared import topics
from shared.cli._output import emit, err_console, print_error
from shared.contract import Contract, ContractError, load_contracts
from shared.datasets import DatasetCatalog
from shared.events import DeadLetter
from shared.service import BAD_CONTRACT_EXIT
from shared.settings import KafkaSettings, ServiceSettings
from shared.store import ArtifactStore
from shared.tables import read_table

# --- rows -> events ------------------------------------------------------------------------


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        return col.cast(col.type.value_type)
    return col


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _column(table: pa.Table, name: str, kind: str) -> list[Any]:
    col = _plain(table.column(name))
    if kind == "category" and not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string()) if not pa.types.is_floating(col.type) else col
    values: list[Any] = col.to_pylist()
    if pa.types.is_temporal(col.type) or pa.types.is_floating(col.type):
        values = [_jsonable(v) for v in values]
    if kind == "category":
        values = [str(int(v)) if isinstance(v, float) and v.is_integer() else v for v in values]
    return values


def join_labels(contract: Contract, table: pa.Table, labels: pa.Table) -> pa.Table:
    """``table`` with its label column taken from ``labels`` (joined on the contract's id)."""
    import pandas as pd

    for name in (contract.id, contract.label.name):
        if name not in labels.column_names:
            raise ValueError(f"labels file has no {name!r} column")
    lookup = pd.Series(
        labels.column(contract.label.name).to_numpy(zero_copy_only=False),
        index=labels.column(contract.id).to_numpy(zero_copy_only=False),
    )
    ids = table.column(contract.id).to_numpy(zero_copy_only=False)
    joined = lookup.reindex(ids)
    column = pa.array(joined.to_numpy(), from_pandas=True)
    if contract.label.name in table.column_names:
        table = table.drop_columns([contract.label.name])
    return table.append_column(contract.label.name, column)


def rows_to_events(
    contract: Contract, table: pa.Table, labels: pa.Table | None = None
) -> list[dict[str, Any]]:
    """The data events (wire format) for every row of ``table``, in row order.

    Args:
        contract: the dataset's contract (names the id, time, feature and label columns).
        table: source rows; extra columns are ignored.
        labels: optional table of (id, label) joined on the contract's id column.
    """
    if labels is not None:
        table = join_labels(contract, table, labels)
    missing = [c for c in [contract.id, *contract.feature_names] if c not in table.column_names]
    if missing:
        raise ValueError(f"the file has no column(s) {missing} required by {contract.name!r}")
    n = table.num_rows
    ids = [str(v) for v in _plain(table.column(contract.id)).to_pylist()]
    times: list[Any] = (
        _column(table, contract.event_time, "time")
        if contract.event_time and contract.event_time in table.column_names
        else [None] * n
    )
    feats = {f.name: _column(table, f.name, f.type) for f in contract.features}
    label_name = contract.label.name
    label: list[Any] = (
        _column(table, label_name, "label") if label_name in table.column_names else [None] * n
    )
    if contract.label.classes and all(isinstance(c, int) for c in contract.label.classes):
        # 1.0 from a float column and true/false from a bool column are the classes 1 and 0.
        label = [
            int(v) if isinstance(v, bool) or (isinstance(v, float) and v.is_integer()) else v
            for v in label
        ]
    names = list(feats)
    rows = zip(*feats.values(), strict=True)
    return [
        {
            "dataset": contract.name,
            "event_id": event_id,
            "event_time": at,
            "features": dict(zip(names, values, strict=True)),
            "label": y,
        }
        for event_id, at, values, y in zip(ids, times, rows, label, strict=True)
    ]


async def publish_events(
    kafka: KafkaSettings,
    events: Sequence[dict[str, Any]],
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 2_000,
) -> int:
    """Publish ``events`` to ``data.events`` keyed by dataset; the number acknowledged.

    Args:
        kafka: Kafka settings.
        events: data events (wire format).
        rate: events per second at most (None: as fast as the broker takes them).
        on_progress: called with the count acknowledged after each chunk.
        chunk: events sent before waiting for their acknowledgements.
    """
    from aiokafka import AIOKafkaProducer

    from shared.kafka import ensure_topics, producer_kwargs

    await ensure_topics(kafka, [topics.DATA_EVENTS])
    producer = AIOKafkaProducer(
        **await producer_kwargs(kafka, "publish"), linger_ms=10, max_batch_size=512 * 1024
    )
    await producer.start()
    done = 0
    started = time.monotonic()
    step = max(1, min(chunk, int(rate))) if rate else chunk
    try:
        for start in range(0, len(events), step):
            part = events[start : start + step]
            futures = [
                await producer.send(
                    topics.DATA_EVENTS,
                    json.dumps(e, separators=(",", ":")).encode(),
                    key=str(e.get("dataset", "")).encode(),
                )
                for e in part
            ]
            await asyncio.gather(*futures)
            done += len(part)
            if on_progress is not None:
                on_progress(done)
            if rate:
                # Pacing to the requested rate, not waiting for readiness.
                ahead = done / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    finally:
        await producer.stop()
    return done


# --- commands ------------------------------------------------------------------------------


def _contract(name: str) -> Contract:
    try:
        contracts = load_contracts(ServiceSettings().contracts)
    except ContractError as err:
        print_error(err)
        raise typer.Exit(BAD_CONTRACT_EXIT) from err
    if name not in contracts:
        print_error(f"no contract {name!r} (known: {sorted(contracts)})")
        raise typer.Exit(1)
    return contracts[name]


def publish(
    name: Annotated[str, typer.Argument(help="Dataset (contract) name.")],
    file: Annotated[Path, typer.Argument(help="CSV, Parquet or JSONL file.", exists=True)],
    labels: Annotated[
        Path | None,
        typer.Option(help="File of id + label columns joined on the contract's id.", exists=True),
    ] = None,
    rate: Annotated[float | None, typer.Option(min=0.001, help="Events per second.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Publish the first N rows.")] = None,
) -> None:
    """Publish a file's rows as data events on ``data.events``."""
    contract = _contract(name)
    try:
        table = read_table(file)
        if limit is not None:
            table = table.slice(0, limit)
        events = rows_to_events(contract, table, read_table(labels) if labels else None)
    except (ValueError, OSError, pa.ArrowException) as err:
        print_error(err)
        raise typer.Exit(1) from err
    kafka = KafkaSettings()
    with Progress(
        TextColumn(f"publishing {name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("publish", total=len(events))
        try:
            sent = asyncio.run(
                publish_events(
                    kafka,
                    events,
                    rate=rate,
                    on_progress=lambda n: progress.update(task, completed=n),
                )
            )
        except ConnectionError as err:
            print_error(err)
            raise typer.Exit(1) from err
    err_console.print(f"published {sent} events of {name} to {topics.DATA_EVENTS}")


def version_rows(catalog: DatasetCatalog, name: str | None) -> list[dict[str, Any]]:
    """Dataset versions as plain objects (what ``flywheel datasets --json`` prints)."""
    names = [name] if name else catalog.names()
    rows: list[dict[str, Any]] = []
    for ds in names:
        for v in catalog.versions(ds):
            rows.append(
                {
                    "dataset": ds,
                    "id": v.id,
                    "parent": v.parent,
                    "rows": v.rows,
                    "batches": [b.batch_id for b in v.batches],
                    "created": v.created.isoformat(),
                    "profile_uri": v.profile_uri,
                    "drift": v.drift.model_dump(mode="json"),
                }
            )
    return rows


def datasets(
    name: Annotated[str | None, typer.Argument(help="Only this dataset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List dataset versions (oldest first) with their rows, batches and drift."""
    catalog = DatasetCatalog(ArtifactStore(ServiceSettings().store))
    rows = version_rows(catalog, name)
    if as_json:
        emit(rows, [], True, "")
        return
    table = [
        {
            "dataset": r["dataset"],
            "version": r["id"][:12],
            "parent": (r["parent"] or "-")[:12],
            "rows": r["rows"],
            "batches": len(r["batches"]),
            "drifted": ", ".join(r["drift"]["drifted_features"]) or "-",
            "created": r["created"][:19],
        }
        for r in rows
    ]
    columns = ["dataset", "version", "parent", "rows", "batches", "drifted", "created"]
    emit(table, columns, False, "dataset versions")


async def read_dlq(kafka: KafkaSettings, limit: int, timeout_s: float = 2.0) -> list[DeadLetter]:
    """The newest ``limit`` dead letters (read without a consumer group, nothing committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.kafka import client_kwargs
    from shared.kafka_protocol import TopicsUnavailable, fetch_partitions

    try:
        # An explicit metadata request: the consumer's own metadata holds no topic yet.
        found = await fetch_partitions(kafka, [topics.DATA_EVENTS_DLQ], timeout_s)
    except TopicsUnavailable:
        return []  # no dead letter was ever written (the topic does not exist)
    tps = [TopicPartition(topics.DATA_EVENTS_DLQ, p) for p in found[topics.DATA_EVENTS_DLQ]]
    consumer = AIOKafkaConsumer(**client_kwargs(kafka, "dlq-reader"), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - limit))
        out: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            fetched = await consumer.getmany(timeout_ms=200)
            for records in fetched.values():
                for r in records:
                    if r.value is not None:
                        out.append(DeadLetter.model_validate_json(r.value))
        out.sort(key=lambda d: d.created)
        return out[-limit:]
    finally:
        await consumer.stop()


def dlq(
    limit: Annotated[int, typer.Option(min=1, help="How many recent records.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show recent rejected data events with their reasons."""
    try:
        letters = asyncio.run(read_dlq(KafkaSettings(), limit))
    except (ConnectionError, OSError) as err:
        print_error(err)
        raise typer.Exit(1) from err
    if as_json:
        emit([d.model_dump(mode="json") for d in letters], [], True, "")
        return
    rows = [
        {
            "time": d.created.isoformat()[:19],
            "dataset": d.dataset,
            "event_id": d.event_id,
            "field": d.field,
            "error": d.error,
            "source": f"{d.source_topic}[{d.partition}]@{d.offset}",
        }
        for d in letters
    ]
    emit(rows, ["time", "dataset", "event_id", "field", "error", "source"], False, "dead letters")


def rejected_rows(
    name: Annotated[str, typer.Argument(help="Dataset (contract) name.")],
    batch: Annotated[str | None, typer.Option(help="Only this batch id.")] = None,
    rule: Annotated[str | None, typer.Option(help="Only this rule (e.g. range:x).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows shown at most (the newest).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Rows validation left out of dataset versions: event id, batch, rule and value."""
    from shared import rejected

    table = rejected.read(ArtifactStore(ServiceSettings().store), name, batch)
    lines = [r for r in table.to_pylist() if rule is None or r["rule"] == rule]
    shown = lines[-limit:]
    if as_json:
        emit(shown, [], True, "")
        return
    for r in shown:
        r["batch_id"] = r["batch_id"][:12]
    counts: dict[str, int] = {}
    for r in lines:
        counts[r["rule"]] = counts.get(r["rule"], 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    columns = ["event_id", "batch_id", "row", "rule", "column", "value"]
    emit(shown, columns, False, f"rejected rows of {name} ({len(lines)}: {summary})")


def register(app: typer.Typer) -> None:
    """Add the data commands to ``app``."""
    app.command("publish")(publish)
    app.command("datasets")(datasets)
    app.command("dlq")(dlq)
    app.command("rejected")(rejected_rows)
