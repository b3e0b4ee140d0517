"""``flywheel contract infer`` and ``flywheel contract check``: contracts from data, checked.

``infer`` profiles a data file into a draft contract (:mod:`shared.contract_infer`);
``check`` loads contract files the way every service does and prints each mistake as
``<file>: <field>: <what>``, exiting 2 when any file is bad.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer
from rich.markup import escape

from shared.cli._output import console, err_console, print_error
from shared.contract import ContractError, load_contract
from shared.contract_infer import MARGIN, MAX_CATEGORIES, MAX_CLASSES, infer_contract, to_yaml
from shared.service import BAD_CONTRACT_EXIT
from shared.tables import read_table

contract_app = typer.Typer(
    help="Draft a contract from a data file, or check contract files.", no_args_is_help=True
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


@contract_app.command("infer")
def infer(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV, Parquet or JSONL file.")
    ],
    name: Annotated[str, typer.Option(help="Contract (= model) name: [a-z][a-z0-9_]*.")],
    label: Annotated[str, typer.Option(help="The label column.")],
    id_column: Annotated[
        str | None, typer.Option("--id", help="The event id column (deduplication).")
    ] = None,
    time_column: Annotated[
        str | None, typer.Option("--time", help="The event time column.")
    ] = None,
    drop: Annotated[
        list[str] | None, typer.Option(help="A column that is not a feature (repeatable).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here (e.g. contracts/NAME.yaml), not stdout."),
    ] = None,
    margin: Annotated[
        float, typer.Option(min=0, help="Share of each numeric span added to its range.")
    ] = MARGIN,
    max_categories: Annotated[
        int, typer.Option(min=1, help="Leave out text columns with more distinct values.")
    ] = MAX_CATEGORIES,
    max_classes: Annotated[
        int, typer.Option(min=2, help="A numeric label with at most this many values is classes.")
    ] = MAX_CLASSES,
    force: Annotated[bool, typer.Option(help="Overwrite --output if it exists.")] = False,
) -> None:
    """Profile FILE and write a draft contract (types, ranges, vocabularies, nulls, task)."""
    if output is not None and output.exists() and not force:
        raise _fail(f"{output} exists (use --force to overwrite)")
    try:
        table = read_table(file)
        inferred = infer_contract(
            table,
            name=name,
            label=label,
            id=id_column,
            event_time=time_column,
            drop=drop or (),
            margin=margin,
            max_categories=max_categories,
            max_classes=max_classes,
        )
    except ContractError as err:
        raise _fail(str(err), BAD_CONTRACT_EXIT) from None
    except (ValueError, OSError, pa.ArrowException) as err:  # InferenceError included
        raise _fail(f"{file}: {err}") from None
    text = to_yaml(inferred, file.name)
    if output is None:
        print(text, end="")
    else:
        output.write_text(text, encoding="utf-8")
        err_console.print(f"wrote {escape(str(output))}")
    c = inferred.contract
    summary = f"{c.task}, {len(c.features)} features" + (
        f", classes {c.label.classes}" if c.label.classes else ""
    )
    err_console.print(f"{escape(c.name)}: {escape(summary)}")
    for column, why in inferred.skipped.items():
        err_console.print(f"[yellow]left out[/] {escape(repr(column))}: {escape(why)}")
    for note in inferred.notes:
        err_console.print(f"[yellow]to do[/] {escape(note)}")


@contract_app.command("check")
def check(
    files: Annotated[list[Path], typer.Argument(help="Contract files (YAML).")],
) -> None:
    """Load each contract as the services do; print every mistake, exit 2 if any."""
    bad = 0
    for path in files:
        try:
            contract = load_contract(path)
        except ContractError as err:
            bad += 1
            for line in str(err).splitlines():
                err_console.print(escape(line), highlight=False, soft_wrap=True)
            continue
        console.print(
            f"{escape(str(path))}: ok ({contract.task}, {len(contract.features)} features)",
            highlight=False,
            soft_wrap=True,
        )
    if bad:
        raise typer.Exit(BAD_CONTRACT_EXIT)


def register(app: typer.Typer) -> None:
    """Add the ``contract`` command group to ``app``."""
    app.add_typer(contract_app, name="contract")
