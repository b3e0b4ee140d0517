"""``flywheel models/model/runs/approve/promote/rollback/reproduce``: the model registry.

Reading commands open the registry in the artifact store (``FLYWHEEL_STORE``).
``approve``, ``promote`` and ``rollback`` do not write the registry, whose one writer
is training: they check the request against the registry (so most mistakes fail at
once), then publish it signed with the deploy key on ``deployment.requests`` (actor
``user:<name>``). Training checks it again, records it in the alias history and
publishes the signed deployment serving and monitoring act on; ``--wait`` waits for
that record.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from shared import topics
from shared.approval import override_problem, refusal
from shared.cli._output import console, emit, emit_object, err_console
from shared.contract import ContractError, load_contracts
from shared.events import DeploymentRequest, RequestAction
from shared.registry import AliasChange, AliasState, ModelManifest, Registry, TamperedArtifactError
from shared.settings import ServiceSettings
from shared.signing import STACK_KEY_FILE, DeployKeyError, load_key, sign
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


def serving_role(state: AliasState, version: int) -> str:
    """What the registry says ``version`` does: ``champion``, ``canary``, ``shadow`` or
    ``-`` (serving's ModelMetadata reports the same as ``role.<version>``)."""
    if state.champion == version:
        return "champion"
    if state.challenger == version and state.champion is not None:
        return "canary" if state.mode == "canary" else "shadow"
    return "-"


def version_row(registry: Registry, manifest: ModelManifest) -> dict[str, Any]:
    """One line of ``flywheel models``."""
    aliases = registry.aliases(manifest.model)
    state = registry.state(manifest.model)
    role = serving_role(state, manifest.version)
    approvals = registry.approvals(manifest.model, manifest.version)
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
        "serving": role,
        "canary_percent": state.canary_percent if role == "canary" else None,
        "approved_by": [a.actor for a in approvals],
        "failed_gates": [n for n, g in manifest.gates.items() if not g.passed],
        "overridden_gates": sorted({str(g) for a in approvals for g in a.detail["overrides"]}),
        "reason": manifest.reason,
    }


def list_models(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered versions with their aliases, dataset version and primary metric."""
    registry = _registry()
    names = [name] if name else registry.tried_models()
    rows = [version_row(registry, m) for n in names for m in registry.versions(n)]
    failures = [line for n in names if (line := last_run_failure(registry, n))]
    if name and not rows:
        if failures and not as_json:
            err_console.print(escape(f"{name}: no registered version; {failures[0]}"))
            raise typer.Exit(1)
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
        "serving",
        "failed_gates",
        "approved_by",
    ]
    emit(rows, columns, as_json, "registered models")
    if not as_json:
        for line in failures:
            console.print(f"[red]{escape(line)}[/]")


def last_run_failure(registry: Registry, name: str) -> str | None:
    """``last run failed: ...`` when the newest training run of ``name`` failed."""
    run = registry.last_run(name)
    if run is None or run.get("status") != "failed":
        return None
    retry = run.get("retry_at")
    when = (
        "retry at " + datetime.fromtimestamp(float(retry), UTC).isoformat(timespec="seconds")
        if retry is not None
        else "no automatic retry left; the next trigger tries again"
    )
    return (
        f"{name}: last run failed: {run.get('error')} (phase {run.get('phase')}, "
        f"attempt {run.get('attempt')}, {run.get('created')}; {when}; run {run.get('run_id')})"
    )


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
        for c in run.get("candidates", [])  # a failed run has none
    ]
    metric = next((run["metric"] for run in runs if "metric" in run), "cv")
    emit(
        rows,
        ["run", "version", "candidate", metric, "std", "seconds", "status", "chosen"],
        False,
        f"runs of {name}",
    )


def _publish(request: DeploymentRequest, settings: ServiceSettings) -> None:
    from aiokafka import AIOKafkaProducer

    from shared.kafka import ensure_topics, headers, producer_kwargs

    try:
        key = load_key(settings, fallback=STACK_KEY_FILE)
    except DeployKeyError as err:
        raise _fail(str(err)) from None
    if key is None:
        raise _fail(
            "no deploy key: set FLYWHEEL_DEPLOY_KEY or FLYWHEEL_DEPLOY_KEY_FILE (the stack's "
            f"key; `flywheel up` writes one to {STACK_KEY_FILE})"
        )
    signed = sign(request, key)

    async def send() -> None:
        await ensure_topics(settings.kafka, [topics.DEPLOYMENT_REQUESTS], attempts=10)
        producer = AIOKafkaProducer(**await producer_kwargs(settings.kafka, "cli"))
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.DEPLOYMENT_REQUESTS,
                value=signed.model_dump_json().encode(),
                key=signed.model.encode(),
                headers=[(k, v.encode()) for k, v in headers(signed.id).items()],
            )
        finally:
            await producer.stop()

    try:
        asyncio.run(send())
    except ConnectionError as err:
        raise _fail(str(err)) from None


def _strategy(settings: ServiceSettings, name: str) -> str:
    try:
        contract = load_contracts(settings.contracts).get(name)
    except ContractError as err:
        raise _fail(str(err)) from None
    if contract is None:
        raise _fail(f"no contract called {name!r} in {settings.contracts}")
    return contract.promotion.strategy


def _request(
    registry: Registry, settings: ServiceSettings, request: DeploymentRequest, wait: float
) -> None:
    """Publish ``request``; with ``wait`` > 0, wait until training has recorded it."""
    _publish(request, settings)
    what = f"{request.action} of {request.model} v{request.version}"
    if wait <= 0:
        console.print(f"requested {what} (request {request.id}); training records it")
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        history = registry.history(request.model)
        recorded = [c.seq for c in history if c.detail.get("request_id") == request.id]
        if recorded:
            console.print(f"recorded {what}: alias history entries {recorded}")
            return
        time.sleep(0.2)  # polling the registry: the only place the outcome is written
    raise _fail(
        f"{what} was not recorded within {wait:g} s: training refused it or is not running "
        "(see its `deployment.refused` log line)"
    )


def _actor(actor: str | None) -> str:
    return f"user:{actor or getpass.getuser()}"


ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in the alias history).")]
ActorOpt = Annotated[
    str | None, typer.Option("--by", "--actor", help="Your name (default: $USER, the login name).")
]
OverrideOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--override",
        help="A failed gate you accept, by name (repeatable; recorded with who and why). "
        "parity can never be overridden.",
    ),
]
WaitOpt = Annotated[
    float,
    typer.Option("--wait", min=0, help="Seconds to wait for training to record it (0: none)."),
]


def approve(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to approve.")],
    reason: ReasonOpt,
    override: OverrideOpt = None,
    actor: ActorOpt = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Approve a version for serving (the manual strategy needs it), overriding failed
    gates by name; recorded in the registry history with who and why."""
    if not reason.strip():
        raise _fail("--reason must say why")
    settings = _settings()
    registry = _registry(settings)
    manifest = _manifest(registry, name, version)
    if not manifest.parity.passed:
        raise _fail(f"{name} v{version} failed the ONNX parity gate: it can never be approved")
    overrides = sorted(set(override or []))
    problem = override_problem(manifest, overrides)
    if problem is not None:
        raise _fail(problem)
    request = DeploymentRequest(
        model=name,
        action="approve",
        version=version,
        overrides=overrides,
        actor=_actor(actor),
        reason=reason,
    )
    _request(registry, settings, request, wait)


def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to deploy.")],
    reason: ReasonOpt,
    canary: Annotated[
        float | None, typer.Option("--canary", min=0.01, max=100, help="Canary share in percent.")
    ] = None,
    shadow: Annotated[bool, typer.Option("--shadow", help="Deploy as a shadow.")] = False,
    override: OverrideOpt = None,
    actor: ActorOpt = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Deploy a version: champion (default), canary with a share, or shadow. A version
    that failed a gate needs ``--override GATE`` (here or in ``flywheel approve``)."""
    if canary is not None and shadow:
        raise _fail("choose one of --canary and --shadow")
    if not reason.strip():
        raise _fail("--reason must say why")
    settings = _settings()
    registry = _registry(settings)
    manifest = _manifest(registry, name, version)
    overrides = sorted(set(override or []))
    problem = override_problem(manifest, overrides)
    if problem is not None:
        raise _fail(problem)
    who = _actor(actor)
    approvals = registry.approvals(name, version)
    if overrides:  # recorded by training together with the change
        approvals.append(
            AliasChange(
                seq=-1,
                alias="approval",
                version=version,
                previous=None,
                actor=who,
                reason=reason,
                detail={"overrides": overrides},
            )
        )
    refused = refusal(manifest, approvals, _strategy(settings, name))
    if refused is not None:
        raise _fail(refused.message)
    action: RequestAction = "canary" if canary is not None else "shadow" if shadow else "promote"
    if action != "promote" and registry.aliases(name)["champion"] in (None, version):
        raise _fail(f"{name} v{version} cannot be a {action}: it needs another champion")
    request = DeploymentRequest(
        model=name,
        action=action,
        version=version,
        canary_percent=canary,
        overrides=overrides,
        actor=who,
        reason=reason,
    )
    _request(registry, settings, request, wait)


def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: ReasonOpt,
    to: Annotated[
        int | None, typer.Option("--to", help="Version to return to (default: previous champion).")
    ] = None,
    actor: ActorOpt = None,
    wait: WaitOpt = 0.0,
) -> None:
    """Return to the previous champion (or ``--to`` a version) and drop any challenger."""
    if not reason.strip():
        raise _fail("--reason must say why")
    settings = _settings()
    registry = _registry(settings)
    target = to if to is not None else registry.previous_champion(name)
    if target is None:
        raise _fail(f"{name} has no previous champion to roll back to")
    manifest = _manifest(registry, name, target)
    refused = refusal(manifest, registry.approvals(name, target), _strategy(settings, name))
    if refused is not None:
        raise _fail(refused.message)
    request = DeploymentRequest(
        model=name, action="rollback", version=target, actor=_actor(actor), reason=reason
    )
    _request(registry, settings, request, wait)


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
    from shared.datasets import DatasetCatalog

    settings = _settings()
    try:
        contract = load_contracts(settings.contracts).get(name)
    except ContractError as err:
        raise _fail(str(err)) from None
    store = ArtifactStore(settings.store)
    try:
        result = reproduce(
            contract or name,  # no file today: the snapshot kept with the version will do
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
        if result.contract_source == "today":
            console.print("  note: no contract snapshot in the manifest: today's contract used")
        for path, (was, now) in result.contract_differences.items():
            console.print(escape(f"  note: contract {path}: {was!r} at training, {now!r} today"))
        if result.code_difference:
            was, now = result.code_difference
            console.print(f"  note: code {was} at training, {now} now")
        for lib, (was, now) in result.library_differences.items():
            console.print(f"  note: {lib} {was} at training, {now} now")
    if not result.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("models")(list_models)
    app.command("model")(show_model)
    app.command("runs")(list_runs)
    app.command("approve")(approve)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("reproduce")(reproduce_cmd)
