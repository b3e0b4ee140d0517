"""``flywheel models/model/runs/promote/rollback/reproduce``: the model registry.

Reading commands open the registry in the artifact store (``FLYWHEEL_STORE``).
``promote`` and ``rollback`` do not write the registry: they publish a request on
``models.deployments`` (actor ``user:<name>``), which training records in the alias
history and serving and monitoring act on.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from typing import Annotated, Any

import typer

from shared import topics
from shared.cli._output import console, emit, emit_object, err_console
from shared.events import Deployment, DeploymentAction
from shared.registry import ModelManifest, Registry, TamperedArtifactError
from shared.settings import ServiceSettings
from shared.store import ArtifactStore

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _settings() -> ServiceSettings:
    return ServiceSettings()


def _registry(settings: ServiceSettings | None = None) -> Registry:
    return Registry(ArtifactStore((settings or _settings()).store))


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/] {message}")
    return typer.Exit(1)


def _manifest(registry: Registry, name: str, version: int) -> ModelManifest:
    try:
        return registry.get(name, version)
    except KeyError as err:
        raise _fail(str(err.args[0])) from None


def version_row(registry: Registry, manifest: ModelManifest) -> dict[str, Any]:
    """One line of ``flywheel models``."""
    aliases = registry.aliases(manifest.model)
    extra = manifest.model_extra or {}
    metric = str(extra.get("primary_metric", ""))
    return {
        "model": manifest.model,
        "version": manifest.version,
        "aliases": [alias for alias, v in aliases.items() if v == manifest.version],
        "dataset_version": manifest.dataset_version,
        "created": manifest.created.isoformat(),
        "primary_metric": metric,
        "primary_metric_value": manifest.metrics.get(metric),
        "promoted": manifest.promoted,
        "failed_gates": [n for n, g in manifest.gates.items() if not g.passed],
        "reason": manifest.reason,
    }


def list_models(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered versions with their aliases, dataset version and primary metric."""
    registry = _registry()
    names = [name] if name else registry.models()
    rows = [version_row(registry, m) for n in names for m in registry.versions(n)]
    if name and not rows:
        raise _fail(f"no model called {name!r} in the registry")
    if not as_json:
        for row in rows:
            row["dataset_version"] = row["dataset_version"][:12]
            row["metric"] = (
                f"{row['primary_metric']} {row['primary_metric_value']:.4f}"
                if row["primary_metric_value"] is not None
                else "-"
            )
    columns = [
        "model",
        "version",
        "aliases",
        "dataset_version",
        "created",
        "metric",
        "promoted",
        "failed_gates",
    ]
    emit(rows, columns, as_json, "registered models")


def show_model(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    as_json: JsonOpt = False,
) -> None:
    """The model card: the whole manifest of one version."""
    registry = _registry()
    manifest = _manifest(registry, name, version)
    body = manifest.model_dump(mode="json")
    body["aliases"] = [a for a, v in registry.aliases(name).items() if v == version]
    if as_json:
        emit_object(body, True)
        return
    for line in body.get("card", []):
        console.print(line)
    console.print()
    emit_object(body, False)


def list_runs(
    name: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonOpt = False,
) -> None:
    """Every training run's search candidates (experiment tracking)."""
    registry = _registry()
    runs = registry.runs(name)
    if as_json:
        print(json.dumps(runs, indent=2, default=str))
        return
    rows = [
        {
            "run": run["run_id"],
            "version": run["version"],
            "candidate": c["name"],
            run["metric"]: c["cv_mean"],
            "std": c["cv_std"],
            "seconds": c["seconds"],
            "status": c["status"],
            "chosen": c["name"] == run["chosen"],
        }
        for run in runs
        for c in run["candidates"]
    ]
    metric = runs[0]["metric"] if runs else "cv"
    emit(
        rows,
        ["run", "version", "candidate", metric, "std", "seconds", "status", "chosen"],
        False,
        f"runs of {name}",
    )


def _publish(event: Deployment) -> None:
    from aiokafka import AIOKafkaProducer

    from shared.kafka import client_kwargs, ensure_topics, headers

    settings = _settings()

    async def send() -> None:
        await ensure_topics(settings.kafka, [topics.MODELS_DEPLOYMENTS], attempts=10)
        producer = AIOKafkaProducer(**client_kwargs(settings.kafka, "cli"), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.MODELS_DEPLOYMENTS,
                value=event.model_dump_json().encode(),
                key=event.model.encode(),
                headers=[(k, v.encode()) for k, v in headers(event.id).items()],
            )
        finally:
            await producer.stop()

    try:
        asyncio.run(send())
    except ConnectionError as err:
        raise _fail(str(err)) from None


def _actor(actor: str | None) -> str:
    return f"user:{actor or getpass.getuser()}"


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the alias history).")]
ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Your name (default: the login name).")
]


def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to deploy.")],
    reason: ReasonOpt,
    canary: Annotated[
        float | None, typer.Option("--canary", min=0.01, max=100, help="Canary share in percent.")
    ] = None,
    shadow: Annotated[bool, typer.Option("--shadow", help="Deploy as a shadow.")] = False,
    actor: ActorOpt = None,
) -> None:
    """Deploy a version: champion (default), canary with a share, or shadow."""
    if canary is not None and shadow:
        raise _fail("choose one of --canary and --shadow")
    if not reason.strip():
        raise _fail("--reason must say why")
    registry = _registry()
    manifest = _manifest(registry, name, version)
    if not manifest.parity.passed:
        raise _fail(f"{name} v{version} failed the ONNX parity gate and cannot be deployed")
    action: DeploymentAction = "canary" if canary is not None else "shadow" if shadow else "promote"
    champion = registry.aliases(name)["champion"]
    event = Deployment(
        model=name,
        action=action,
        version=version,
        champion_version=version if action == "promote" else champion,
        canary_percent=canary,
        actor=_actor(actor),
        reason=reason,
    )
    _publish(event)
    console.print(f"requested {action} of {name} v{version} (event {event.id})")


def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: ReasonOpt,
    to: Annotated[
        int | None, typer.Option("--to", help="Version to return to (default: previous champion).")
    ] = None,
    actor: ActorOpt = None,
) -> None:
    """Return to the previous champion (or ``--to`` a version) and drop any challenger."""
    from services.training.deploy import previous_champion

    if not reason.strip():
        raise _fail("--reason must say why")
    registry = _registry()
    target = to if to is not None else previous_champion(registry, name)
    if target is None:
        raise _fail(f"{name} has no previous champion to roll back to")
    manifest = _manifest(registry, name, target)
    if not manifest.parity.passed:
        raise _fail(f"{name} v{target} failed the ONNX parity gate and cannot be deployed")
    event = Deployment(
        model=name,
        action="rollback",
        version=target,
        champion_version=target,
        actor=_actor(actor),
        reason=reason,
    )
    _publish(event)
    console.print(f"requested rollback of {name} to v{target} (event {event.id})")


def reproduce_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to reproduce.")],
    tolerance: Annotated[float, typer.Option(help="Largest allowed prediction difference.")] = 1e-9,
    threads: Annotated[
        int | None, typer.Option(min=1, help="OpenMP/BLAS threads (default: the libraries' own).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrain a version from its manifest; exit 1 unless the predictions match."""
    from services.training.reproduce import reproduce
    from shared.contract import ContractError, load_contracts
    from shared.datasets import DatasetCatalog

    settings = _settings()
    try:
        contract = load_contracts(settings.contracts).get(name)
    except ContractError as err:
        raise _fail(str(err)) from None
    if contract is None:
        raise _fail(f"no contract called {name!r} in {settings.contracts}")
    store = ArtifactStore(settings.store)
    try:
        result = reproduce(
            contract,
            Registry(store),
            DatasetCatalog(store),
            version,
            tolerance=tolerance,
            threads=threads,
        )
    except TamperedArtifactError as err:
        raise _fail(f"refused: {err}") from None
    except KeyError as err:
        raise _fail(str(err.args[0])) from None
    if as_json:
        emit_object(result.as_dict(), True)
    else:
        verdict = "[green]reproduced[/]" if result.passed else "[red]NOT reproduced[/]"
        console.print(
            f"{name} v{version}: {verdict} on {result.rows} holdout rows "
            f"(labels agree {result.label_agreement:.4%}, max diff {result.max_abs_diff:.3g}, "
            f"ONNX bytes identical: {result.onnx_identical})"
        )
        for problem in result.problems:
            console.print(f"  - {problem}")
        for lib, (was, now) in result.library_differences.items():
            console.print(f"  note: {lib} {was} at training, {now} now")
    if not result.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("models")(list_models)
    app.command("model")(show_model)
    app.command("runs")(list_runs)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("reproduce")(reproduce_cmd)
