"""Generate deploy/k8s/contracts-configmap.yaml from contracts/*.yaml (``--check``: diff only).

Kustomize refuses files outside its root by default, so the ConfigMap carries a copy of
the contracts; this script is the only way that copy is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "k8s" / "contracts-configmap.yaml"

HEADER = """\
# Generated from contracts/*.yaml by tools/gen_k8s_contracts.py; do not edit by hand
# (tests/unit/test_deploy_k8s.py checks they match).
apiVersion: v1
kind: ConfigMap
metadata:
  name: flywheel-contracts
  namespace: flywheel
  labels:
    app.kubernetes.io/part-of: flywheel
data:
"""


def render() -> str:
    """The whole ConfigMap: one literal block per contract file, in name order."""
    parts = [HEADER]
    for path in sorted((ROOT / "contracts").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        # A literal block ("|") keeps exactly one final newline: the files must end with one.
        if not text.endswith("\n") or text.endswith("\n\n"):
            raise SystemExit(f"{path.name}: must end with exactly one newline")
        parts.append(f"  {path.name}: |\n")
        parts.extend(f"    {line}\n" if line else "\n" for line in text.splitlines())
    return "".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.name} is stale: run `python tools/gen_k8s_contracts.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
