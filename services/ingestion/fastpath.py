"""The fast path: decode and type-check data events in C with msgspec.

One msgspec ``Struct`` per contract, tagged by the ``dataset`` field, mirrors the
envelope in its *strictest* form: ``event_id`` a non-empty string or an integer, every
non-nullable feature present with its exact JSON type (float features accept integers;
int features integers only; bools booleans only; categories strings or integers) and a
label from the contract's classes. An event that decodes is certainly acceptable; any
other event (bad JSON, unknown dataset, a missing field, a wrong type, but also merely
unusual forms such as ``1.0`` for an int) falls back to the column-wise
:class:`~services.ingestion.envelope.EnvelopeChecker`, which accepts what it can and
names the field and problem of what it cannot. Decoding with validation here runs at
about seven times the rate of a bare ``json.loads``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Literal, Union

import msgspec

from shared import eventtime
from shared.contract import Contract, Feature

from .envelope import event_time_column

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An integer an Arrow int64 column can hold (wider ones take the slow path)."""


def _feature_type(f: Feature) -> Any:
    base: Any = {"float": float, "int": _Int64, "bool": bool}.get(f.type, str | int)
    return base | None if f.nullable else base


def _label_type(contract: Contract) -> Any:
    classes = contract.label.classes
    if classes is not None:
        return Literal[tuple(classes)]
    return _Int64 if contract.label.type == "int" else float


def event_struct(contract: Contract) -> type[msgspec.Struct]:
    """The strict msgspec struct of ``contract``'s data events."""
    names = {f"f{i}": f.name for i, f in enumerate(contract.features)}
    fields: list[Any] = []
    for i, f in enumerate(contract.features):
        ftype = _feature_type(f)
        fields.append((f"f{i}", ftype, None) if f.nullable else (f"f{i}", ftype))
    # Required fields first: msgspec wants defaults last.
    fields.sort(key=lambda fld: len(fld) == 3)
    features = msgspec.defstruct(f"Features_{contract.name}", fields, rename=names, kw_only=True)
    return msgspec.defstruct(
        f"Event_{contract.name}",
        [
            ("event_id", _NonEmpty | int),
            ("features", features),
            ("label", _label_type(contract)),
            ("event_time", str | int | float | None, None),
        ],
        tag_field="dataset",
        tag=contract.name,
        kw_only=True,
    )


class FastDecoder:
    """Decodes messages of every known dataset in one pass.

    Args:
        contracts: contract name -> contract.
    """

    def __init__(self, contracts: Mapping[str, Contract]):
        self.contracts = dict(contracts)
        self._types = {name: event_struct(c) for name, c in self.contracts.items()}
        self._names = {t: name for name, t in self._types.items()}
        types = tuple(self._types.values())
        target: Any = types[0] if len(types) == 1 else Union[types]  # noqa: UP007
        self._decoder = msgspec.json.Decoder(target)
        self._feature_attrs = {
            name: [(f, attrgetter(f"f{i}")) for i, f in enumerate(c.features)]
            for name, c in self.contracts.items()
        }

    def split(
        self, values: Sequence[bytes | None], lines: bytes | None
    ) -> tuple[dict[str, tuple[list[int], list[Any]]], list[int]]:
        """Decode ``values``: dataset -> (indices, structs) for the strict ones, and the
        indices that need the slow path.

        ``lines``: the chunk as JSON lines (:func:`~services.ingestion.envelope.json_lines`),
        or None when it cannot be one line per message.
        """
        names = self._names
        errors = (msgspec.ValidationError, msgspec.DecodeError)
        # The common case, a clean chunk: one C call decodes it as JSON lines. Blank lines
        # are skipped by the decoder, so an empty message shows as a count mismatch.
        if lines is not None:
            try:
                decoded: list[Any] | None = self._decoder.decode_lines(lines)
            except errors:
                decoded = None  # some message is not strict: sort them out one by one
            if decoded is not None and len(decoded) == len(values):
                kinds = set(map(type, decoded))
                if len(kinds) == 1:
                    return {names[kinds.pop()]: (list(range(len(decoded))), decoded)}, []
                mixed: dict[str, tuple[list[int], list[Any]]] = {}
                for i, event in enumerate(decoded):
                    bucket = mixed.setdefault(names[type(event)], ([], []))
                    bucket[0].append(i)
                    bucket[1].append(event)
                return mixed, []
        decode = self._decoder.decode
        groups: dict[str, tuple[list[int], list[Any]]] = {}
        slow: list[int] = []
        for i, value in enumerate(values):
            if value is None:
                slow.append(i)
                continue
            try:
                event = decode(value)
            except errors:
                slow.append(i)
                continue
            name = names[type(event)]
            group = groups.get(name)
            if group is None:
                group = groups[name] = ([], [])
            group[0].append(i)
            group[1].append(event)
        return groups, slow

    def columns(
        self, name: str, events: list[Any], ingested_at: datetime
    ) -> tuple[dict[str, list[Any]], list[int]]:
        """Batch columns (as the envelope checker makes them) from decoded events, and
        the positions of the events whose time :mod:`shared.eventtime` cannot read
        (their values are not usable; they belong on the slow path, which names the
        problem)."""
        contract = self.contracts[name]
        ids = list(map(attrgetter("event_id"), events))
        if int in set(map(type, ids)):
            ids = [v if type(v) is str else str(v) for v in ids]
        times, bad = eventtime.parse_all(list(map(attrgetter("event_time"), events)), ingested_at)
        cols: dict[str, list[Any]] = {contract.id: ids, event_time_column(contract): times}
        feats = list(map(attrgetter("features"), events))
        for f, get in self._feature_attrs[name]:
            values = list(map(get, feats))
            if f.type == "category" and int in set(map(type, values)):
                values = [v if type(v) is not int else str(v) for v in values]
            cols[f.name] = values
        cols[contract.label.name] = list(map(attrgetter("label"), events))
        return cols, bad
