"""Assembles the ``flywheel`` command from its command-group modules."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="flywheel",
    help="Flywheel: event-driven MLOps on Kafka, ONNX Runtime and gRPC.",
    no_args_is_help=True,
    add_completion=False,
)

# Each module has ``register(app)``; the order is the order of ``flywheel --help``.
COMMAND_MODULES = ("stack", "admin", "contract", "data", "models", "predict", "lineage")

for _name in COMMAND_MODULES:
    importlib.import_module(f"shared.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()
