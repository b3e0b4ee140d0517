"""The topic reference is generated from the code and kept in sync with it."""

from __future__ import annotations

import subprocess
import sys

from shared import topics
from shared.topic_specs import TOPIC_SPECS
from tests.conftest import ROOT


def test_every_topic_has_a_spec() -> None:
    assert [s.name for s in TOPIC_SPECS] == list(topics.ALL_TOPICS)


def test_topic_reference_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_topics_doc.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
