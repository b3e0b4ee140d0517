"""``flywheel ensure-topics``: create every Flywheel topic (the compose/k8s init step)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from aiokafka.errors import KafkaError

from shared import topics
from shared.cli._output import emit, err_console
from shared.kafka import describe_topics, ensure_topics, topic_retention
from shared.settings import KafkaSettings


def ensure_all_topics(
    partitions: Annotated[
        int | None,
        typer.Option(min=1, help="Partitions per new topic (default: KAFKA_PARTITIONS)."),
    ] = None,
    replication_factor: Annotated[
        int | None,
        typer.Option(min=1, help="Replication factor (default: KAFKA_REPLICATION_FACTOR)."),
    ] = None,
    wait: Annotated[
        float, typer.Option(min=1.0, help="Seconds to keep retrying while Kafka is unreachable.")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create the topics Flywheel uses that do not exist yet; idempotent.

    New topics get their partitions, replication factor and ``retention.ms``
    (shared/topic_specs.py). Existing topics are left as they are: their partition count
    and retention are shown as the broker reports them, not changed.
    """
    updates: dict[str, Any] = {}
    if partitions is not None:
        updates["partitions"] = partitions
    if replication_factor is not None:
        updates["replication_factor"] = replication_factor
    kafka = KafkaSettings().model_copy(update=updates)
    retry_delay_s = 0.5

    async def run() -> tuple[list[str], dict[str, int], dict[str, int | None]]:
        created = await ensure_topics(
            kafka,
            topics.ALL_TOPICS,
            attempts=max(1, int(wait / retry_delay_s)),
            retry_delay_s=retry_delay_s,
        )
        return (
            created,
            await describe_topics(kafka),
            await topic_retention(kafka, topics.ALL_TOPICS),
        )

    try:
        created, described, retention = asyncio.run(run())
    except (ConnectionError, KafkaError) as err:
        err_console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from err
    rows = [
        {
            "topic": name,
            "partitions": described.get(name),
            "retention_ms": retention.get(name),
            "created": name in created,
        }
        for name in topics.ALL_TOPICS
    ]
    missing = [r["topic"] for r in rows if r["partitions"] is None]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        columns = ["topic", "partitions", "retention_ms", "created"]
        emit(rows, columns, False, f"topics on {kafka.servers}")
    if missing:
        err_console.print(f"[red]error:[/] topics still missing after creation: {missing}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("ensure-topics")(ensure_all_topics)
