"""Printing helpers shared by the commands: ``--json`` or a rich table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool, title: str) -> None:
    """Print ``rows`` as a JSON list (``--json``) or as a table of ``columns``."""
    if as_json:
        print(json.dumps(list(rows), indent=2, default=str))
        return
    # Names and values are the data's own text ("x [cm]"): never rich markup.
    table = Table(title=escape(title))
    for col in columns:
        table.add_column(escape(col))
    for row in rows:
        table.add_row(*(escape(_cell(row.get(c))) for c in columns))
    console.print(table)


def print_error(message: object) -> None:
    """``error: <message>`` on stderr, the message printed as it is (no markup)."""
    err_console.print(f"[red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def emit_object(obj: dict[str, Any], as_json: bool) -> None:
    """Print one object as JSON (``--json``) or as indented, highlighted JSON."""
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        console.print_json(json.dumps(obj, default=str))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)
