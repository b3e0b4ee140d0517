"""``python -m bench [--quick] [--only NAME ...]``: every benchmark in one run, then the report.

Each benchmark module (``bench/<name>.py`` with ``run(quick) -> dict``) runs in its own
child process, one after the other, so a crash, a hang or leaked state in one cannot
spoil the next; a module that fails is recorded as failed with its error, and a
module that is not there as missing. The figures go to
``bench/results/<YYYY-MM-DD>.json`` (``-quick.json`` for ``--quick``) with the machine
facts, and ``docs/benchmarks.md`` plus ``docs/img/bench_*.png`` are rendered from it.
``--only`` re-runs some modules and keeps the others' figures from the same day's file.

Adaptive batching on/off at concurrency 1, 4, 16, 64 is part of ``bench/serving.py``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODULES = ("serving", "ingestion", "training", "drift", "loop")
TIMEOUT_S = {"serving": 1800, "ingestion": 900, "training": 900, "drift": 1800, "loop": 1800}
PACKAGES = (
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "onnxruntime",
    "skl2onnx",
    "grpcio",
    "tritonclient",
    "aiokafka",
    "faststream",
    "matplotlib",
)
QUANTILES = (1, 2, 5, *range(10, 100, 5), 97.5, 99, 99.5, 99.9)
"""Latency percentiles kept per serving load: enough points for a CDF, small JSON."""


def machine() -> dict[str, Any]:
    """Facts about this machine and checkout that the figures depend on."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "packages": packages,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def _with_quantiles(serving: Any) -> None:
    """Make bench.serving keep latency percentiles next to its p50/p99 (for the CDF plot).

    The serving module reduces each load's latencies to figures in ``_figures``; this
    wraps it to add the percentiles, leaving its own figures untouched.
    """
    import numpy as np

    figures = getattr(serving, "_figures", None)
    if figures is None:
        return

    def with_quantiles(latencies: list[float], *args: Any, **kwargs: Any) -> dict[str, Any]:
        out: dict[str, Any] = figures(latencies, *args, **kwargs)
        if latencies:
            values = np.percentile(np.asarray(latencies) * 1000, QUANTILES)
            out["quantiles_ms"] = {
                "p": [q / 100 for q in QUANTILES],
                "values": [round(float(v), 4) for v in values],
            }
        return out

    serving._figures = with_quantiles


def child(name: str, quick: bool, out: Path) -> None:
    """Run one module in this process and write its figures as JSON to ``out``."""
    module = importlib.import_module(f"bench.{name}")
    if name == "serving":
        _with_quantiles(module)
    result = module.run(quick=quick)
    out.write_text(json.dumps(result, default=str), encoding="utf-8")


def run_module(name: str, quick: bool) -> dict[str, Any]:
    """One module in a child process: its status, wall time and figures or error."""
    if importlib.util.find_spec(f"bench.{name}") is None:
        return {"status": "missing", "error": f"bench/{name}.py is not in this checkout"}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench", "--child", name, "--out", str(out)]
        cmd += ["--quick"] if quick else []
        started = time.perf_counter()
        try:
            done = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S[name], check=False
            )
        except subprocess.TimeoutExpired as exc:
            return {
                "status": "failed",
                "seconds": round(time.perf_counter() - started, 1),
                "error": f"timed out after {exc.timeout} s",
            }
        seconds = round(time.perf_counter() - started, 1)
        if done.returncode != 0 or not out.exists():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
            return {
                "status": "failed",
                "seconds": seconds,
                "error": f"exit {done.returncode}: {tail}",
            }
        return {"status": "ok", "seconds": seconds, "result": json.loads(out.read_text())}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, record the results, render the report; 1 if any failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short loads, for debugging")
    parser.add_argument("--only", nargs="+", choices=MODULES, help="run only these modules")
    parser.add_argument("--child", choices=MODULES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.quick, args.out)
        return 0

    from bench import _report

    day = datetime.now(UTC).strftime("%Y-%m-%d")
    path = RESULTS / f"{day}{'-quick' if args.quick else ''}.json"
    previous = json.loads(path.read_text()) if args.only and path.exists() else {}
    modules: dict[str, Any] = dict(previous.get("modules", {}))
    facts = machine()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    began = time.perf_counter()
    for name in args.only or MODULES:
        print(f"bench: {name} ...", flush=True)
        modules[name] = run_module(name, args.quick)
        entry = modules[name]
        print(f"bench: {name} {entry['status']} ({entry.get('seconds', 0)} s)", flush=True)
        if entry["status"] != "ok":
            print(f"  {entry['error']}", flush=True)
    facts["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results = {
        "quick": args.quick,
        "started": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - began, 1),
        "only": args.only,
        "machine": facts,
        "modules": {name: modules[name] for name in MODULES if name in modules},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    written = _report.render(results, path)
    print(f"bench: wrote {path.relative_to(ROOT)}")
    for p in written:
        print(f"bench: wrote {p.relative_to(ROOT)}")
    print(f"bench: wall time {results['wall_s']} s")
    return 1 if any(m["status"] == "failed" for m in results["modules"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
