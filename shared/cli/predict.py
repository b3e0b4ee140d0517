"""``flywheel predict NAME FILE``: send rows to the serving service, print predictions.

Rows come from a CSV, JSON-lines or Parquet file holding (at least) the contract's
features. They go over OIP v2 gRPC as one tensor per feature, named exactly as the
contract names it (FP64 for numeric features, BYTES for categories), in batches; each
printed row shows its prediction id, the answer, and the model and data version that
produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import grpc
import numpy as np
import pandas as pd
import typer

from shared.cli._output import emit, print_error
from shared.contract import ContractError, load_contracts
from shared.features import MISSING_CATEGORY, to_frame
from shared.protogen import inference_pb2 as pb
from shared.protogen import inference_pb2_grpc as pb_grpc
from shared.service import BAD_CONTRACT_EXIT
from shared.settings import ServiceSettings

DEFAULT_URL = "127.0.0.1:8001"


def read_rows(path: Path) -> pd.DataFrame:
    """A frame from a ``.csv``, ``.jsonl``/``.ndjson``/``.json`` or ``.parquet``/``.pq`` file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return pd.read_json(path, lines=suffix != ".json")
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r} (csv, jsonl, parquet)")


def build_request(
    model: str, version: str, contract: Any, rows: pd.DataFrame
) -> pb.ModelInferRequest:
    """A columnar ``ModelInferRequest`` for ``rows``."""
    missing = [f for f in contract.feature_names if f not in rows.columns]
    if missing:
        raise ValueError(f"the file lacks the features {missing}")
    frame = to_frame(contract, {f: rows[f].to_numpy() for f in contract.feature_names})
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for f in contract.features:
        col = frame[f.name].to_numpy()
        tensor = request.inputs.add(name=f.name, shape=[len(col)])
        if f.is_numeric:
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.extend(col.astype(np.float64).tolist())
        else:
            tensor.datatype = "BYTES"
            tensor.contents.bytes_contents.extend(
                b"" if v == MISSING_CATEGORY else str(v).encode() for v in col
            )
    return request


def _outputs(response: pb.ModelInferResponse) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for t in response.outputs:
        c = t.contents
        if t.datatype == "BYTES":
            out[t.name] = [v.decode() for v in c.bytes_contents]
        elif t.datatype == "INT64":
            out[t.name] = list(c.int64_contents)
        else:
            values = list(c.fp32_contents or c.fp64_contents)
            width = int(t.shape[1]) if len(t.shape) == 2 else 1
            out[t.name] = (
                [values[i : i + width] for i in range(0, len(values), width)]
                if width > 1
                else values
            )
    return out


def predict(
    name: Annotated[str, typer.Argument(help="Model (= contract) name.")],
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV, JSONL or Parquet.")
    ],
    url: Annotated[
        str, typer.Option(envvar="FLYWHEEL_SERVING_URL", help="Serving gRPC address host:port.")
    ] = DEFAULT_URL,
    version: Annotated[str, typer.Option(help="Pin a loaded model version.")] = "",
    limit: Annotated[int, typer.Option(min=1, help="Send at most this many rows.")] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per request.")] = 64,
    token: Annotated[
        str | None, typer.Option(envvar="FLYWHEEL_SERVING_TOKEN", help="Bearer token.")
    ] = None,
    tls_ca: Annotated[
        Path | None, typer.Option(exists=True, help="CA certificate: connect with TLS.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Send rows from FILE to model NAME and print each prediction with its model and data
    version."""
    try:
        contract = load_contracts(ServiceSettings().contracts).get(name)
    except ContractError as err:
        print_error(err)
        raise typer.Exit(BAD_CONTRACT_EXIT) from err
    if contract is None:
        print_error(f"no contract named {name!r}")
        raise typer.Exit(1)
    try:
        rows = read_rows(file).head(limit)
    except (ValueError, OSError) as err:
        print_error(err)
        raise typer.Exit(1) from err
    metadata = [("authorization", f"Bearer {token}")] if token else None
    channel = (
        grpc.secure_channel(url, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
        if tls_ca
        else grpc.insecure_channel(url)
    )
    results: list[dict[str, Any]] = []
    with channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        for start in range(0, len(rows), batch_size):
            chunk = rows.iloc[start : start + batch_size]
            try:
                request = build_request(name, version, contract, chunk)
                response = stub.ModelInfer(request, metadata=metadata, timeout=30)
            except ValueError as err:
                print_error(f"{file}: {err}")
                raise typer.Exit(1) from err
            except grpc.RpcError as err:
                print_error(f"{err.code().name}: {err.details()}")
                raise typer.Exit(1) from err
            outputs = _outputs(response)
            data_version = response.parameters["data_version"].string_param
            for i in range(len(chunk)):
                row: dict[str, Any] = {"row": start + i}
                row.update({k: v[i] for k, v in outputs.items()})
                row["model_version"] = response.model_version
                row["data_version"] = data_version
                results.append(row)
    columns = (
        [
            "row",
            "prediction_id",
            *(
                k
                for k in results[0]
                if k not in ("row", "prediction_id", "model_version", "data_version")
            ),
            "model_version",
            "data_version",
        ]
        if results
        else ["row"]
    )
    emit(results, columns, as_json, f"{name} predictions")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("predict")(predict)
