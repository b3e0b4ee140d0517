"""Safe ONNX names for contract names, and renaming an exported graph's inputs to them.

A contract names its features exactly as the data does (``dew point``,
``sea-level_pressure``, ``sepal length (cm)``, ``température``); the ONNX IR wants
C90 identifiers. :func:`safe_names` maps each feature to one, deterministically from
the names alone: a name that already is an identifier keeps it, any other has every
character outside ``[A-Za-z0-9_]`` replaced by ``_`` (a leading digit gets a ``_``
prefix) and a ``_2``, ``_3``... suffix where that would collide. Everything outside the
model file (events, Parquet columns, OIP tensors, metrics) keeps the contract's names;
the mapping is recorded in the model's manifest.

skl2onnx renames inputs its own way (keeping non-ASCII letters), so
:func:`rename_io` rewrites the exported graph's inputs to :func:`safe_names` (and its
outputs to their fixed names), renaming any intermediate value that would clash.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence

import onnx

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def safe_names(names: Sequence[str], reserved: Collection[str] = ()) -> dict[str, str]:
    """Each name mapped to a distinct C identifier (itself when it already is one).

    Args:
        names: distinct names, in contract order (the order decides suffixes).
        reserved: identifiers no name may get (the graph's output names).
    """
    keep = {n for n in names if _IDENTIFIER.fullmatch(n) and n not in reserved}
    used = keep | set(reserved)
    out: dict[str, str] = {}
    for name in names:
        if name in keep:
            out[name] = name
            continue
        base = _UNSAFE.sub("_", name)
        if not base or base[0].isdigit():
            base = f"_{base}"
        candidate, k = base, 2
        while candidate in used:
            candidate, k = f"{base}_{k}", k + 1
        used.add(candidate)
        out[name] = candidate
    return out


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _value_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for g in _graphs(graph):
        names.update(v.name for v in (*g.input, *g.output, *g.value_info))
        names.update(i.name for i in g.initializer)
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
    names.discard("")
    return names


def _apply(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    for g in _graphs(graph):
        for v in (*g.input, *g.output, *g.value_info):
            v.name = mapping.get(v.name, v.name)
        for init in g.initializer:
            init.name = mapping.get(init.name, init.name)
        for node in g.node:
            node.input[:] = [mapping.get(n, n) for n in node.input]
            node.output[:] = [mapping.get(n, n) for n in node.output]


def rename_io(model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Rename ``model``'s graph inputs and outputs, in order, to these names (in place).

    An intermediate value that already carries one of the new names is renamed to a
    fresh one, so the graph stays well-formed whatever skl2onnx called things (it names
    an output ``label1`` when an input took ``label``).
    """
    graph = model.graph
    current = [v.name for v in (*graph.input, *graph.output)]
    targets = [*inputs, *outputs]
    if len(current) != len(targets):
        raise ValueError(
            f"the graph has {len(graph.input)} inputs and {len(graph.output)} outputs, "
            f"not {len(inputs)} and {len(outputs)}"
        )
    if current == targets:
        return
    taken = _value_names(graph) | set(targets)
    mapping: dict[str, str] = dict(zip(current, targets, strict=True))
    for name in sorted(taken & set(targets) - set(current)):
        k = 1
        while f"{name}_{k}" in taken:
            k += 1
        mapping[name] = f"{name}_{k}"
        taken.add(mapping[name])
    _apply(graph, mapping)
