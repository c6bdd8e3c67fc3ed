"""`multinode-vllm up` with no inventory: the embedded default on the local test bed (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

# The embedded default needs the test bed's builders; until they exist there is nothing to run.
pytest.importorskip("multinode_vllm.testbed.nodeenv")
pytest.importorskip("multinode_vllm.testbed.tinymodel")

CLI = [sys.executable, "-m", "multinode_vllm"]


def cli(*args: str, timeout: int = 1800) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [*CLI, *args, "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CI": "true"},
    )
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, doc, proc.stderr


def test_up_serves_answers_and_reruns_without_changes() -> None:
    rc, doc, err = cli("up")
    assert rc == 0, err[-3000:]
    run = doc["run"]
    assert run["status"] == "successful"
    assert run["endpoint"]
    phases = [p["phase"] for p in run["phases"]]
    assert phases.index("cluster") < phases.index("serve")
    smoke = doc["smoke"]
    assert smoke["endpoint"].startswith("http://")
    assert isinstance(smoke["answer"], str) and smoke["answer"].strip()

    # the second run finds everything in place
    rc, doc, err = cli("up")
    assert rc == 0, err[-3000:]
    changed = {h: s["changed"] for h, s in doc["run"]["hosts"].items()}
    assert set(changed.values()) == {0}, changed

    rc, doc, err = cli("status")
    assert rc == 0, err[-3000:]
