"""``docs/benchmarks.md`` and its plots, from one results file of ``python -m bench``.

Everything here reads the recorded JSON only: a figure that a module did not produce
is shown as missing (with the module's error), never filled in.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
IMG = ROOT / "docs" / "img"
SERVERS = (
    "flywheel",
    "flywheel_native",
    "minimal",
    "grpc_floor",
    "mlserver",
    "mlserver_rest",
    "mlserver_tuned",
    "mlserver_tuned_w0",
    "mlserver_tuned_w1",
    "mlserver_tuned_w2",
    "kserve",
    "triton",
)
LOADS = ("sequential b1", "16 concurrent b1", "16 concurrent b64")
PEERS = {
    "mlserver": "MLServer as shipped",
    "mlserver_tuned": "MLServer tuned",
    "kserve": "KServe",
    "triton": "Triton (PyTriton)",
}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return round(float(a) / float(b), 2)
    return None


def _spread(values: list[float]) -> str:
    """Median (min-max) of repeats."""
    if not values:
        return "-"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def _failed(name: str, entry: dict[str, Any]) -> list[str]:
    if entry.get("status") == "ok":
        return []
    reason = entry.get("error", "no result")
    return [f"**Not measured** ({entry.get('status')}): `{reason.splitlines()[-1][:300]}`", ""]


# --- plots ---------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdf(serving: dict[str, Any], path: Path) -> bool:
    """Latency CDF per load for each server (from the recorded percentiles)."""
    loads = [
        load for load in serving.get("flywheel", {}) if isinstance(serving["flywheel"][load], dict)
    ]
    if not loads or "quantiles_ms" not in serving["flywheel"][loads[0]]:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(loads), figsize=(5 * len(loads), 3.8), squeeze=False)
    for ax, load in zip(axes[0], loads, strict=True):
        for server in SERVERS:
            figures = serving.get(server, {}).get(load)
            if not isinstance(figures, dict) or "quantiles_ms" not in figures:
                continue
            q = figures["quantiles_ms"]
            ax.plot(q["values"], q["p"], label=server)
        ax.set_xscale("log")
        ax.set_title(load)
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Serving latency CDF (tritonclient, census model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_batching(serving: dict[str, Any], path: Path) -> bool:
    """Requests/s and p50 against concurrency, adaptive batching off and on."""
    off, on = serving.get("batching_off"), serving.get("batching_on")
    if not off or not on:
        return False
    plt = _plt()
    levels = list(off)
    xs = [int(c.lstrip("c")) for c in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, mode in (("batching off", off), ("batching on", on)):
        left.plot(xs, [mode[c]["req_per_s"] for c in levels], marker="o", label=name)
        right.plot(xs, [mode[c]["p50_ms"] for c in levels], marker="o", label=name)
    for ax, label in ((left, "requests/s (batch 1)"), (right, "p50 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Flywheel serving: throughput vs concurrency, adaptive batching off/on")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_ingestion(ingestion: dict[str, Any], path: Path) -> bool:
    """Events/s of each round: the raw consumer next to the ingestion service."""
    raw, ing = ingestion.get("raw_rounds_per_s"), ingestion.get("ingestion_rounds_per_s")
    if not raw or not ing:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    rounds = range(1, len(raw) + 1)
    width = 0.38
    ax.bar([r - width / 2 for r in rounds], raw, width, label="raw aiokafka getmany + json.loads")
    ax.bar(
        [r + width / 2 for r in rounds], ing, width, label="ingestion: events -> durable batches"
    )
    ax.set_xticks(list(rounds), [f"round {r}" for r in rounds])
    ax.set_ylabel("events/s")
    ax.set_title(f"Ingestion rate ({ingestion.get('events', 0):,} census events per round)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


AHEAD = ("fit", "export", "parity", "evaluate")
"""Training phases of finishing the search's winner, on a second thread during the search."""


def plot_training(training: dict[str, Any], path: Path) -> bool:
    """Phase split of one training run next to a bare fit."""
    phases = training.get("phases_s")
    if not phases:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.0))
    # The search and what was left of finishing its winner after it are the run's wall
    # time; fit, export, parity and evaluate ran on a second thread during the search.
    rows = {"train() wall": ("search", "finish_wait"), "finishing (2nd thread)": AHEAD}
    for row, names in rows.items():
        left = 0.0
        for phase in names:
            seconds = phases.get(phase, 0.0)
            ax.barh(row, seconds, left=left, label=phase)
            left += seconds
    ax.barh("bare fit", training.get("bare_fit_s", 0.0), color="grey")
    ax.set_xlabel("seconds")
    ax.set_title("Training run: phase split vs a bare fit of the chosen estimator")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_loop(loop: dict[str, Any], path: Path) -> bool:
    """Stages of the loop, one bar per profile."""
    profiles = {k: v for k, v in loop.get("profiles", {}).items() if "stages_s" in v}
    if not profiles:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.6 * len(profiles)))
    stages = list(next(iter(profiles.values()))["stages_s"])
    for i, stage in enumerate(stages):
        lefts = [sum(list(p["stages_s"].values())[:i]) for p in profiles.values()]
        widths = [p["stages_s"].get(stage, 0.0) for p in profiles.values()]
        ax.barh(list(profiles), widths, left=lefts, label=stage)
    ax.axvline(loop.get("goal_s", 5.0), color="red", linestyle="--", label="goal: first answer")
    if loop.get("searched_goal_s"):
        ax.axvline(loop["searched_goal_s"], color="darkred", linestyle=":", label="goal: searched")
    ax.set_xlabel("seconds from the last data event")
    ax.set_title("Loop latency: last event -> first answer -> searched champion answering")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- sections ------------------------------------------------------------------------------


def _serving(entry: dict[str, Any], made: set[str]) -> list[str]:
    out = ["## Serving", ""]
    out += _failed("serving", entry)
    r = entry.get("result")
    if not r:
        return out
    out += [
        "Same census model (contract pipeline, ONNX), same tritonclient load; at each load "
        "every server takes a short slice in turn, round after round. "
        f"{_fmt(r.get('seconds_per_load'))} s per load and server. MLServer as shipped serves "
        "the same fitted pipeline with its sklearn runtime (pandas codec, a tensor per "
        "feature); every other server takes one FP32 matrix and runs the same ONNX file in "
        "ONNX Runtime. MLServer tuned is a custom ONNX runtime with the numpy codec, "
        f"`parallel_workers` in {r.get('mlserver_workers_tried')} (rows `_w0`..), and "
        "`mlserver_tuned` is the fastest of them per load. KServe is its Python model server "
        "over gRPC; Triton is `tritonserver` from `nvidia-pytriton` with its Python backend. "
        "`grpc_floor` is the minimal server answering each request size with one "
        "precomputed response (no decoding, no model): grpc.aio's and the client's own "
        "per-request cost, the most any Python server on grpc.aio can reach. "
        "`flywheel_native` is Flywheel on its default gRPC server (pygrpc-native); "
        "`flywheel` is the same service on grpc.aio (`FLYWHEEL_SERVING_GRPC_SERVER=grpcio`, "
        "what runs when TLS is configured). REST and adaptive batching below run on the "
        "default server.",
        "",
    ]
    rows: list[list[Any]] = []
    for server in SERVERS:
        figures = r.get(server, {})
        if "error" in figures:
            rows.append([server, "failed: " + str(figures["error"])[:120], "", "", "", "", ""])
            continue
        for load, f in figures.items():
            if isinstance(f, dict):
                rows.append(
                    [
                        server,
                        load,
                        f["p50_ms"],
                        f["p99_ms"],
                        f["req_per_s"],
                        f["rows_per_s"],
                        f["errors"],
                    ]
                )
    out += _table(["server", "load", "p50 ms", "p99 ms", "req/s", "rows/s", "errors"], rows)
    raw = r.get("raw_ort", {})
    if raw:
        out += [
            "Raw ONNX Runtime `session.run` (no transport): "
            + ", ".join(f"{k.replace('_p50_us', '')} p50 {_fmt(v, 1)} µs" for k, v in raw.items()),
            "",
        ]
    summary = r.get("summary", {})
    if summary:
        out += ["Ratios (same run):", ""]
        out += _table(["ratio", "value"], sorted(summary.items()))
    if "bench_latency_cdf.png" in made:
        out += ["![latency CDF](img/bench_latency_cdf.png)", ""]
    off, on = r.get("batching_off"), r.get("batching_on")
    if off and on:
        out += [
            "### Adaptive batching",
            "",
            f"Flywheel with the batcher off (max delay 0) and on (max delay "
            f"{_fmt(r.get('batching_delay_ms'))} ms), batch-1 requests, interleaved.",
            "",
        ]
        rows = [
            [
                c,
                off[c]["req_per_s"],
                on[c]["req_per_s"],
                _ratio(on[c]["req_per_s"], off[c]["req_per_s"]),
                off[c]["p50_ms"],
                on[c]["p50_ms"],
                off[c]["p99_ms"],
                on[c]["p99_ms"],
            ]
            for c in off
            if c in on
        ]
        out += _table(
            [
                "clients",
                "req/s off",
                "req/s on",
                "on/off",
                "p50 off",
                "p50 on",
                "p99 off",
                "p99 on",
            ],
            rows,
        )
        if "bench_throughput_concurrency.png" in made:
            out += ["![throughput vs concurrency](img/bench_throughput_concurrency.png)", ""]
    out += _protocols(r)
    for server in ("flywheel_native", "flywheel"):
        events = r.get(f"{server}_events")
        if events:
            out += [
                f"Prediction rows published and dropped by `{server}` (one message per "
                "partition per publishing round carries its requests' rows): "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in events.items()),
                "",
            ]
    return out


def _protocols(r: dict[str, Any]) -> list[str]:
    """REST beside gRPC on the same Flywheel process, and MLServer's REST, same loads."""
    protocols = r.get("flywheel_protocols", {})
    if not protocols:
        return []
    out = [
        "### REST beside gRPC",
        "",
        "One Flywheel process, its gRPC port and its REST port (`tritonclient.http`: binary "
        "tensor extension, and plain JSON tensors), interleaved slice by slice; MLServer's "
        "REST row (as shipped, JSON) is from the peer runs above.",
        "",
    ]
    rows: list[list[Any]] = []
    ml_rest = r.get("mlserver_rest", {})
    for load, by in protocols.items():
        grpc = by.get("grpc", {}).get("req_per_s")
        for protocol, f in by.items():
            rows.append(
                [
                    load,
                    protocol,
                    f["p50_ms"],
                    f["p99_ms"],
                    f["req_per_s"],
                    _ratio(f["req_per_s"], grpc),
                ]
            )
        ml = ml_rest.get(load)
        if isinstance(ml, dict):
            rows.append(
                [
                    load,
                    "mlserver_rest",
                    ml["p50_ms"],
                    ml["p99_ms"],
                    ml["req_per_s"],
                    _ratio(ml["req_per_s"], grpc),
                ]
            )
    return out + _table(["load", "protocol", "p50 ms", "p99 ms", "req/s", "vs Flywheel gRPC"], rows)


def _ingestion(entry: dict[str, Any], made: set[str]) -> list[str]:
    out = ["## Ingestion", ""]
    out += _failed("ingestion", entry)
    r = entry.get("result")
    if not r:
        return out
    out += [
        f"{_fmt(r['events'])} census data events (mean {_fmt(r.get('event_bytes_mean'))} bytes) "
        f"on one embedded broker, read {r['rounds']} times by each reader in interleaved rounds. "
        "Ingestion is timed from its first fetched chunk until the `data.batches` events cover "
        "every row, so it includes the last partial batch waiting for the time window "
        f"(gap before the last batch event: {r.get('last_batch_gap_s', '?')} s). "
        "Median (min-max) over the rounds:",
        "",
    ]
    out += _table(
        ["reader", "events/s"],
        [
            ["raw aiokafka getmany + json.loads", _spread(r["raw_rounds_per_s"])],
            [
                "ingestion: events -> Parquet batches, acknowledged",
                _spread(r["ingestion_rounds_per_s"]),
            ],
            ["ratio ingestion / raw (medians)", r["ratio_ingestion_to_raw"]],
        ],
    )
    if "bench_ingestion_rate.png" in made:
        out += ["![ingestion rate](img/bench_ingestion_rate.png)", ""]
    return out


def _training(entry: dict[str, Any], made: set[str]) -> list[str]:
    out = ["## Training", ""]
    out += _failed("training", entry)
    r = entry.get("result")
    if not r:
        return out
    data = r.get("data", {})
    out += [
        f"One run of the training service's `train` on {_fmt(data.get('rows'))} census rows "
        f"({_fmt(data.get('train_rows'))} train, {_fmt(data.get('holdout_rows'))} holdout), "
        f"{r.get('threads')} thread(s), search budget {_fmt(r.get('search_budget_s'))} s, "
        f"{r.get('candidates')} candidates; chosen `{r.get('chosen')}` "
        f"({', '.join(f'{k} {_fmt(v, 3)}' for k, v in r.get('primary_metric', {}).items())}).",
        "",
    ]
    rows = [[phase, s] for phase, s in r["phases_s"].items()]
    rows += [["total train()", r["total_train_s"]], ["bare fit (same rows)", r["bare_fit_s"]]]
    if "finish_wait" in r["phases_s"]:
        out += [
            f"{', '.join(AHEAD)} finish the search's leader on a second thread while the "
            "search goes on; `finish_wait` is what was left of it when the search ended, "
            "so the phases add up to more than the run's wall time.",
            "",
        ]
    rows += [["train() / bare fit", r.get("overhead_vs_bare_fit")]]
    out += _table(["phase", "seconds"], rows)
    if "bench_training_phases.png" in made:
        out += ["![training phases](img/bench_training_phases.png)", ""]
    return out


def _loop_spread(profile: dict[str, Any], key: str = "loop_s") -> str:
    runs = profile.get(f"{key}_runs") or [profile.get(key)]
    if len(runs) < 2 or None in runs:
        return _fmt(profile.get(key))
    return f"{_fmt(profile.get(key))} ({_fmt(min(runs))}-{_fmt(max(runs))})"


def _loop(entry: dict[str, Any], made: set[str]) -> list[str]:
    out = ["## Loop latency", ""]
    out += _failed("loop", entry)
    r = entry.get("result")
    if not r:
        return out
    out += [
        "Broker and all five services as real processes, fresh store; the census reference "
        "data published as data events (one ingestion batch, cut by its last event); timed from "
        "the last event acknowledged to the first gRPC response (the fast first candidate) and "
        "to the searched model's outcome (its first response when promoted through the normal "
        "gates, or its refusal). Stages from the `created` timestamps of the events on the "
        "topics, each from the end of the one before. Loop: median (min-max) over the repeats; "
        "stages and phases: medians.",
        "",
    ]
    profiles = r.get("profiles", {})
    stages: list[str] = []
    for p in profiles.values():
        stages += [s for s in p.get("stages_s", {}) if s not in stages]
    rows = []
    for name, p in profiles.items():
        first = p.get("first_model") or p.get("model_1", {})
        searched = p.get("searched_model", {})
        rows.append(
            [
                name,
                _loop_spread(p),
                _loop_spread(p, "searched_loop_s"),
                *[p.get("stages_s", {}).get(s) for s in stages],
                p.get("rows", first.get("rows")),
                _fmt(first.get("metrics", {}).get("roc_auc"), 3),
                _fmt(searched.get("metrics", {}).get("roc_auc"), 3),
                "; ".join(sorted(set(p.get("searched_outcomes", ["answering"])))),
            ]
        )
    headers = ["profile", "first answer s", "searched s", *stages, "rows"]
    out += _table([*headers, "first roc_auc", "searched roc_auc", "searched model"], rows)
    out += [
        "`searched model`: `answering` when the search's winner beat the fast candidate and was "
        "promoted (timed to its first response); `refused: <gates>` when it did not beat it (timed "
        "to its registration with the failed gates; the fast candidate stays champion).",
        "",
    ]
    out += [
        f"Goals: first answer under {_fmt(r.get('goal_s'))} s, searched champion under "
        f"{_fmt(r.get('searched_goal_s', 15.0))} s.",
        "",
    ]
    phases = {name: p.get("training_phases_s") for name, p in profiles.items()}
    seen = {ph for v in phases.values() if v for ph in v}
    order = [
        *(f"fast_first:{ph}" for ph in ("fit", "evaluate", "export", "parity")),
        *("search", "fit", "evaluate", "export", "parity"),
    ]
    names = [ph for ph in order if ph in seen] + sorted(seen - set(order))
    if names:
        out += ["Training phases inside the loop (its `flywheel_training_phase_seconds`):", ""]
        out += _table(
            ["profile", *names],
            [[name, *[(v or {}).get(ph) for ph in names]] for name, v in phases.items()],
        )
    out += _table(
        ["profile", "settings", "publish s", "stack start s"],
        [
            [
                name,
                " ".join(f"{k}={v}" for k, v in p.get("env", {}).items()) or "defaults",
                p.get("publish_s"),
                p.get("stack_startup_s"),
            ]
            for name, p in profiles.items()
        ],
    )
    if "bench_loop_stages.png" in made:
        out += ["![loop stages](img/bench_loop_stages.png)", ""]
    return out


def _drift(entry: dict[str, Any], made: set[str]) -> list[str]:
    out = ["## Drift computation", ""]
    out += _failed("drift", entry)
    r = entry.get("result")
    if not r:
        return out
    features = r.get("features", {})
    out += [
        f"Synthetic seeded data, {features.get('numeric')} numeric + "
        f"{features.get('categorical')} categorical features, reference of "
        f"{_fmt(r.get('reference_rows'))} rows (profile built once in "
        f"{_fmt(r.get('flywheel_profile_build_s'), 3)} s); truly drifted: "
        f"{', '.join(r.get('truly_drifted', []))}. Evidently's DataDriftPreset on the same "
        "data in its own venv; times are medians of repeats. Flywheel's verdict is "
        "validation's (PSI > 0.2, KS > 0.1, JS > 0.1 or binned normed Wasserstein >= 0.1); "
        "PSI alone is shown for comparison.",
        "",
    ]
    rows: list[list[Any]] = []
    for window, w in r.get("windows", {}).items():
        rows.append(
            [
                f"{int(window):,} rows",
                w.get("flywheel_s"),
                w.get("flywheel_with_profile_s"),
                w.get("evidently_s", w.get("evidently_error")),
                w.get("speedup"),
                w.get("speedup_with_profile"),
                w.get("agreement_validation_vs_evidently"),
                w.get("agreement_psi_vs_evidently"),
                ", ".join(w.get("flywheel_drifted_validation", [])),
                ", ".join(w.get("evidently_drifted", [])),
            ]
        )
    out += _table(
        [
            "window",
            "Flywheel s",
            "Flywheel s with profile build",
            "Evidently s",
            "speed-up",
            "speed-up with profile build",
            "verdict agreement",
            "agreement (PSI alone)",
            "Flywheel drifted",
            "Evidently drifted",
        ],
        rows,
    )
    return out


def _generic(name: str, entry: dict[str, Any]) -> list[str]:
    out = [f"## {name.capitalize()}", ""]
    out += _failed(name, entry)
    r = entry.get("result")
    if not r:
        return out
    rows: list[list[Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, int | float | str | bool) or value is None:
            rows.append([prefix, value])

    walk("", r)
    out += _table(["figure", "value"], rows)
    return out


def render(results: dict[str, Any], results_path: Path) -> list[Path]:
    """Write the plots and ``docs/benchmarks.md``; the files written."""
    IMG.mkdir(parents=True, exist_ok=True)
    modules = results["modules"]
    made: set[str] = set()

    def result(name: str) -> dict[str, Any]:
        entry = modules.get(name, {})
        value: dict[str, Any] = entry.get("result") or {}
        return value

    plots = {
        "bench_latency_cdf.png": (plot_latency_cdf, result("serving")),
        "bench_throughput_concurrency.png": (plot_batching, result("serving")),
        "bench_ingestion_rate.png": (plot_ingestion, result("ingestion")),
        "bench_training_phases.png": (plot_training, result("training")),
        "bench_loop_stages.png": (plot_loop, result("loop")),
    }
    written: list[Path] = []
    for filename, (plot, data) in plots.items():
        if data and plot(data, IMG / filename):
            made.add(filename)
            written.append(IMG / filename)

    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python -m bench{' --quick' if results['quick'] else ''}`) "
        f"from `{results_path.relative_to(ROOT)}`; do not edit by hand.",
        "",
        f"Run {results['started']} - {results['finished']} on {m['cpus']} CPU(s), "
        f"{m['platform']}, Python {m['python']}, git `{m['git_sha'][:12]}`"
        f"{' (uncommitted changes)' if m.get('git_dirty') else ''}. "
        f"Load average (1 min) before/after: {m['load_average_before'][0]} / "
        f"{m['load_average_after'][0]}. The machine is shared, so absolute numbers are noisy: "
        "compare the ratios, measured side by side in the same run.",
        "",
        "## Summary",
        "",
    ]
    lines += _table(
        ["benchmark", "status", "wall s"],
        [[name, e.get("status"), e.get("seconds")] for name, e in modules.items()],
    )
    lines += _goals(modules)
    sections = {
        "serving": _serving,
        "ingestion": _ingestion,
        "training": _training,
        "drift": _drift,
        "loop": _loop,
    }
    for name, entry in modules.items():
        section = sections.get(name)
        lines += section(entry, made) if section else _generic(name, entry)
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines += ["## Versions", "", versions, ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("\n".join(lines), encoding="utf-8")
    written.append(DOC)
    if _quote_in_readme(results, results_path, _goals(modules) + _headlines(modules)):
        written.append(README)
    return written


README_START, README_END = "<!-- bench:goals -->", "<!-- /bench:goals -->"


def _quote_in_readme(results: dict[str, Any], results_path: Path, goals: list[str]) -> bool:
    """Replace the README's quoted goals table (between its markers) with this run's."""
    if results["quick"] or not README.exists():
        return False  # a quick run is a smoke test, not figures to quote
    text = README.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    m = results["machine"]
    block = [
        README_START,
        f"From `{results_path.relative_to(ROOT)}` ({results['started'][:10]}, {m['cpus']} "
        f"CPUs, load average {m['load_average_before'][0]} before): ratios measured side by "
        "side in one run.",
        "",
        *goals[2:],  # the tables without the goals heading
        README_END,
    ]
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    README.write_text(head + "\n".join(block) + tail, encoding="utf-8")
    return True


def _headlines(modules: dict[str, Any]) -> list[str]:
    """Absolute figures behind the ratios that the README quotes."""
    out: list[str] = []
    ing = modules.get("ingestion", {}).get("result") or {}
    if ing:
        out.append(
            f"- ingestion, census events/s (median, min-max): Flywheel end to end "
            f"{_spread(ing['ingestion_rounds_per_s'])}; raw aiokafka `getmany` + `json.loads` "
            f"{_spread(ing['raw_rounds_per_s'])}"
        )
    return ["", *out] if out else []


def _goals(modules: dict[str, Any]) -> list[str]:
    """The issue's goals next to the figures measured (ratios in one run)."""
    rows: list[list[Any]] = []

    def res(name: str) -> dict[str, Any]:
        value: dict[str, Any] = modules.get(name, {}).get("result") or {}
        return value

    serving = res("serving")
    if "flywheel_native" in serving:
        rows += _server_rows(serving, "native_", "flywheel_native", "serving", floor_note=False)
        what = "serving on grpcio (with TLS):"
    else:  # results from before the native server was the default
        what = "serving"
    rows += _server_rows(serving, "", "flywheel", what, floor_note=True)
    value = res("ingestion").get("ratio_ingestion_to_raw")
    rows.append(["ingestion rate vs raw consumer", ">= 0.5x", value, _ok(value, 0.5, True)])
    loop = res("loop")
    first_goal = float(loop.get("goal_s", 5.0))
    searched_goal = float(loop.get("searched_goal_s", 15.0))
    for name, p in loop.get("profiles", {}).items():
        value = p.get("loop_s")
        rows.append(
            [
                f"loop latency, first answer, {name} (s)",
                f"< {first_goal:g} s",
                value,
                _ok(value, first_goal, False),
            ]
        )
        value = p.get("searched_loop_s")
        outcome = "; ".join(sorted(set(p.get("searched_outcomes", ["answering"]))))
        rows.append(
            [
                f"loop latency, searched model {outcome}, {name} (s)",
                f"< {searched_goal:g} s",
                value,
                _ok(value, searched_goal, False),
            ]
        )
    window = res("drift").get("windows", {}).get("100000", {})
    value = window.get("speedup_with_profile")
    rows.append(
        [
            "drift, 100k-row window: speed-up vs Evidently, profile build included",
            ">= 5x",
            value,
            _ok(value, 5, True),
        ]
    )
    value = window.get("speedup")
    rows.append(["drift, 100k-row window: speed-up, profile held", "(shown)", value, "-"])
    value = window.get("agreement_validation_vs_evidently")
    rows.append(
        ["drift, 100k-row window: verdict agreement", "1.0 (same)", value, _ok(value, 1.0, True)]
    )
    return ["### Goals (issues 8 and 17)", "", *_table(["figure", "goal", "measured", "met"], rows)]


def _ratio_row(figure: str, value: Any, bound: float, at_least: bool = True) -> list[Any]:
    """A goals-table row of a ratio that must be at least (or at most) ``bound``."""
    return [figure, f"{'>=' if at_least else '<='} {bound:g}x", value, _ok(value, bound, at_least)]


def _server_rows(
    serving: dict[str, Any], prefix: str, server: str, what: str, *, floor_note: bool
) -> list[list[Any]]:
    """``server``'s goals rows: against the minimal server (req/s >= 0.85x, p99 at 16 x 64
    <= 1.5x, the other p99 and p50 shown), against the gRPC floor (shown) and against each
    peer (req/s >= 1.5x); ``prefix`` picks its ratios in the summary."""
    summary = serving.get("summary", {})
    rows: list[list[Any]] = []

    def ratio(key: str, load: str) -> Any:
        return summary.get(f"{prefix}{key}_{load}")

    for load in LOADS:
        value = ratio("throughput_ratio_vs_minimal", load)
        rows.append(_ratio_row(f"{what} req/s vs minimal server ({load})", value, 0.85))
    for load in LOADS:
        figure = f"{what} p99 vs minimal server ({load})"
        value = ratio("p99_ratio_vs_minimal", load)
        if load == "16 concurrent b64":
            rows.append(_ratio_row(figure, value, 1.5, False))
        else:
            rows.append([figure, "(shown)", value, "-"])
    for load in LOADS:
        value = ratio("p50_ratio_vs_minimal", load)
        rows.append([f"{what} p50 vs minimal server ({load})", "(shown)", value, "-"])
    for load in LOADS:
        value = ratio("throughput_ratio_vs_grpc_floor", load)
        rows.append([f"{what} req/s vs gRPC floor, no model ({load})", "(shown)", value, "-"])
    return rows + _peer_rows(serving, prefix, server, what, floor_note=floor_note)


def _peer_rows(
    serving: dict[str, Any], prefix: str, server: str, what: str, *, floor_note: bool
) -> list[list[Any]]:
    """``server``'s throughput against each peer (goal 1.5x); with ``floor_note`` (a
    grpc.aio server) a missed goal also says what the grpc.aio floor itself reaches."""
    summary = serving.get("summary", {})
    rows: list[list[Any]] = []
    for peer, label in PEERS.items():
        row = serving.get(peer, {})
        for load in LOADS:
            value = summary.get(f"{prefix}throughput_ratio_vs_{peer}_{load}")
            if value is None and "error" in row:
                value = "did not run: " + str(row["error"])[:160]
            met = _ok(value, 1.5, True)
            if met == "no":
                ours, them = serving[server][load], row[load]
                met = (
                    f"no: {label} is faster ({_fmt(them['req_per_s'])} vs "
                    f"{_fmt(ours['req_per_s'])} req/s)"
                    if value < 1
                    else "no"
                )
                floor = summary.get(f"throughput_ratio_grpc_floor_vs_{peer}_{load}")
                if floor is not None and floor_note:
                    met += f" (the grpc.aio floor itself is {_fmt(floor)}x)"
            rows.append([f"{what} req/s vs {label} ({load})", ">= 1.5x", value, met])
    return rows


def _ok(value: Any, bound: float, at_least: bool) -> str:
    if not isinstance(value, int | float):
        return "not measured"
    met = value >= bound if at_least else value <= bound
    return "yes" if met else "no"
