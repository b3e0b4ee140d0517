"""The ONNX export of a fitted pipeline, its probabilities in the contract's class order.

scikit-learn sorts a classifier's classes (``classes_`` is ``np.unique`` of the labels),
and skl2onnx writes the ``probabilities`` columns in that order. The contract's order is
the one users see everywhere else (``label.classes``, ModelMetadata, the model card), so
the export appends a ``Gather`` on the class axis that puts the columns in contract
order: every reader of the ONNX file (serving, parity, a champion's evaluation, a client
running the file itself) gets column ``i`` = ``label.classes[i]`` without a mapping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import skl2onnx  # noqa: F401  # loaded with the service: the first export paid 0.2 s for it
from onnx import helper, numpy_helper
from sklearn.pipeline import Pipeline

from shared.contract import Contract
from shared.features import to_onnx

PROBABILITIES = "probabilities"


def class_columns(fitted: list[Any], classes: list[Any]) -> np.ndarray:
    """For each contract class, its column in the fitted model's (sorted) order.

    Labels are matched by text (``1`` and ``"1"`` are one class, as in the training data).

    Raises:
        ValueError: the fitted classes are not the contract's (a class the training rows
            never held has no column to put in its place).
    """
    position = {str(c): i for i, c in enumerate(fitted)}
    missing = [c for c in classes if str(c) not in position]
    if missing or len(position) != len(classes):
        raise ValueError(
            f"the model was fitted on classes {list(fitted)}, the contract lists {classes}: "
            f"the training rows hold no {missing or 'unlisted'} labels"
        )
    return np.asarray([position[str(c)] for c in classes], dtype=np.int64)


def in_contract_order(proba: np.ndarray, fitted: list[Any], classes: list[Any]) -> np.ndarray:
    """``proba`` (columns in ``fitted`` order) with its columns in contract order."""
    return np.asarray(proba)[:, class_columns(fitted, classes)]


def _fresh(graph: onnx.GraphProto, base: str) -> str:
    """``base``, suffixed until no input, output, initializer or node output uses it."""
    used = {i.name for i in (*graph.input, *graph.output)} | {t.name for t in graph.initializer}
    used.update(name for node in graph.node for name in (*node.input, *node.output))
    name, n = base, 0
    while name in used:
        n += 1
        name = f"{base}_{n}"
    return name


def reorder_probabilities(model: bytes, columns: np.ndarray) -> bytes:
    """``model`` with its ``probabilities`` output's columns taken in ``columns`` order."""
    if np.array_equal(columns, np.arange(len(columns))):
        return model
    proto = onnx.load_from_string(model)
    graph = proto.graph
    inner = _fresh(graph, f"{PROBABILITIES}_fitted_order")
    for node in graph.node:
        node.output[:] = [inner if o == PROBABILITIES else o for o in node.output]
        node.input[:] = [inner if i == PROBABILITIES else i for i in node.input]
    order = _fresh(graph, f"{PROBABILITIES}_contract_columns")
    graph.initializer.append(numpy_helper.from_array(columns, name=order))
    graph.node.append(
        helper.make_node(
            "Gather", [inner, order], [PROBABILITIES], axis=1, name="contract_class_order"
        )
    )
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def export(pipeline: Pipeline, contract: Contract) -> bytes:
    """ONNX bytes of a fitted pipeline; a classifier's probabilities in contract order."""
    model = to_onnx(pipeline, contract)
    if contract.task != "classification":
        return model
    columns = class_columns(list(pipeline.classes_), list(contract.label.classes or []))
    return reorder_probabilities(model, columns)
