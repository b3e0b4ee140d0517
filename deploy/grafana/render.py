"""Render the dashboards' panels to PNG from a live Prometheus (Grafana cannot run here).

    python deploy/grafana/render.py http://127.0.0.1:9090 docs/img [--minutes 10]

Each dashboard JSON (deploy/grafana/dashboards) becomes one PNG: every panel's
PromQL targets are evaluated through the Prometheus HTTP API (``query_range`` for
time series, ``query`` for stats and tables) with ``$model`` as ``.*``, and drawn
with matplotlib in the panel's grid order. It shows the same data Grafana would;
styling is matplotlib's.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"


def expand(expr: str) -> str:
    """A panel expression with the dashboard variables substituted (all models)."""
    return expr.replace("$model", ".*")


def api(base: str, path: str, **params: str) -> Any:
    """GET a Prometheus API path; the ``data`` field (raises on an error status)."""
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def render_dashboard(base: str, path: Path, out: Path, minutes: float) -> Path:
    """Draw one dashboard's panels into ``out/<name>.png``; the file written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(path.read_text())
    panels = board["panels"]
    end = time.time()
    start = end - minutes * 60
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel["title"], fontsize=10)
        kind = panel["type"]
        lines: list[str] = []
        for target in panel["targets"]:
            expr = expand(target["expr"])
            if kind == "timeseries":
                step = str(max(1, int(minutes * 60 / 300)))
                data = api(
                    base,
                    "/api/v1/query_range",
                    query=expr,
                    start=str(start),
                    end=str(end),
                    step=step,
                )
                for series in data["result"]:
                    xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    ax.plot(xs, ys, label=_legend(target["legendFormat"], series["metric"]))
            else:
                data = api(base, "/api/v1/query", query=expr)
                for series in data["result"]:
                    value = float(series["value"][1])
                    lines.append(
                        f"{_legend(target['legendFormat'], series['metric'])}: {value:.4g}"
                    )
        if kind == "timeseries":
            ax.set_xlabel("minutes before render", fontsize=8)
            if ax.has_data():
                ax.legend(fontsize=6, loc="upper left")
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.axis("off")
            text = "\n".join(lines[:18]) if lines else "no data"
            ax.text(
                0.02, 0.95, text, va="top", family="monospace", fontsize=7, transform=ax.transAxes
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{board['title']} (rendered from Prometheus with matplotlib)")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    target_path = out / f"dashboard_{path.stem}.png"
    fig.savefig(target_path, dpi=80)
    plt.close(fig)
    return target_path


def render_all(base: str, out: Path, minutes: float = 10.0) -> list[Path]:
    """Render every dashboard; the PNG files written."""
    return [render_dashboard(base, p, out, minutes) for p in sorted(DASHBOARDS.glob("*.json"))]


def main(argv: list[str]) -> int:
    """``render.py PROMETHEUS_URL OUT_DIR [--minutes N]``."""
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    minutes = float(argv[argv.index("--minutes") + 1]) if "--minutes" in argv else 10.0
    for path in render_all(argv[0], Path(argv[1]), minutes):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
