"""``flywheel lineage PREDICTION_ID``: where a served answer came from.

Reads the prediction log monitoring writes to the artifact store
(``predictions/<model>/date=*/<sha>.parquet`` and ``feedback/...``; see
``services/monitoring/predlog.py``: a prediction id ``<request key>-<row>`` is one row
of the log, found once even if a replay wrote it twice), then follows the row to its model
version and
manifest (registry), the dataset version it was trained on (catalog), and that
version's batches with their source topic offsets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
import typer

from shared.cli._output import console, emit_object, err_console
from shared.datasets import DatasetCatalog
from shared.registry import Registry
from shared.settings import ServiceSettings
from shared.store import ArtifactStore


def _tables(store: ArtifactStore, prefix: str) -> Iterator[pa.Table]:
    for key in store.list(prefix):
        if key.endswith(".parquet"):
            yield store.get_parquet(key)


def find_prediction(store: ArtifactStore, prediction_id: str) -> dict[str, Any] | None:
    """The logged row of ``prediction_id`` (inputs/outputs decoded), or None (the first
    copy when a replay logged it twice)."""
    for table in _tables(store, "predictions"):
        hit = table.filter(pc.equal(table["prediction_id"], prediction_id))
        if hit.num_rows:
            row: dict[str, Any] = hit.slice(0, 1).to_pylist()[0]
            for col in ("inputs", "outputs", "shadow"):
                row[col] = json.loads(row[col]) if row[col] is not None else None
            return row
    return None


def find_feedback(store: ArtifactStore, prediction_id: str) -> list[dict[str, Any]]:
    """Every logged label of ``prediction_id`` (joined or late), oldest first; a label a
    replay logged twice is listed once."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for table in _tables(store, "feedback"):
        for row in table.filter(pc.equal(table["prediction_id"], prediction_id)).to_pylist():
            key = (row["label"], row["model"])
            row["label"] = json.loads(row["label"])
            found.setdefault(key, row)
    return sorted(found.values(), key=lambda r: str(r["received"]))


def lineage(store: ArtifactStore, prediction_id: str) -> dict[str, Any]:
    """The full lineage of one prediction; KeyError when the log does not have it."""
    prediction = find_prediction(store, prediction_id)
    if prediction is None:
        raise KeyError(f"prediction {prediction_id} is not in the prediction log (yet)")
    out: dict[str, Any] = {
        "prediction": prediction,
        "feedback": find_feedback(store, prediction_id),
    }
    model, version = str(prediction["model"]), int(prediction["model_version"])
    try:
        manifest = Registry(store).get(model, version)
    except KeyError as err:
        out["model"] = {"error": str(err.args[0])}
        return out
    out["model"] = manifest.model_dump(mode="json")
    try:
        dataset = DatasetCatalog(store).get(model, manifest.dataset_version)
    except KeyError as err:
        out["dataset"] = {"error": str(err.args[0])}
        return out
    out["dataset"] = {
        "dataset": dataset.dataset,
        "version": dataset.id,
        "parent": dataset.parent,
        "rows": dataset.rows,
        "profile_uri": dataset.profile_uri,
        "created": dataset.created.isoformat(),
    }
    out["batches"] = [b.model_dump(mode="json") for b in dataset.batches]
    return out


def lineage_cmd(
    prediction_id: Annotated[str, typer.Argument(help="The prediction id serving returned.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a prediction, its model version and manifest, its dataset version and batches."""
    store = ArtifactStore(ServiceSettings().store)
    try:
        found = lineage(store, prediction_id)
    except KeyError as err:
        err_console.print(f"[red]error:[/] {err.args[0]}")
        raise typer.Exit(1) from None
    if as_json:
        emit_object(found, as_json=True)
        return
    p = found["prediction"]
    console.print(
        f"[bold]prediction[/] {p['prediction_id']}  {p['model']} v{p['model_version']} "
        f"({p['role']})  at {p['created']}"
    )
    console.print(f"  inputs  {json.dumps(p['inputs'], default=str)}")
    console.print(f"  outputs {json.dumps(p['outputs'], default=str)}")
    for fb in found["feedback"]:
        console.print(f"  label   {fb['label']!r} (received {fb['received']})")
    model = found["model"]
    if "error" in model:
        console.print(f"[yellow]model:[/] {model['error']}")
        return
    console.print(
        f"[bold]model[/] {model['model']} v{model['version']}  {model['estimator']}  "
        f"trained on {model['dataset_version'][:12]}  reason: {model['reason']}"
    )
    dataset = found.get("dataset", {})
    if "error" in dataset:
        console.print(f"[yellow]dataset:[/] {dataset['error']}")
        return
    console.print(
        f"[bold]dataset[/] {dataset['dataset']} {dataset['version'][:12]}  {dataset['rows']} rows"
    )
    for b in found["batches"]:
        spans = ", ".join(
            f"{o['topic']}[{o['partition']}] {o['first']}-{o['last']}" for o in b["offsets"]
        )
        console.print(f"  batch {b['batch_id'][:12]}  {b['rows']} rows  {spans}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("lineage")(lineage_cmd)
