"""The bench phase and the 100-stream load check on the local test bed (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_beds import default_bed_serving

pytestmark = pytest.mark.e2e

pytest.importorskip("multinode_vllm.testbed.nodeenv")

CLI = [sys.executable, "-m", "multinode_vllm"]
# testbed.md's settings: a CPU vLLM with --max-num-seqs 4.
SMALL = "vllm_bench_input_len=32 vllm_bench_output_len=16 vllm_bench_num_prompts=20 vllm_bench_max_concurrency=4"


def cli(*args: str, timeout: int = 1800) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [*CLI, *args, "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CI": "true"},
    )
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.stderr


def test_bench_and_100_streams() -> None:
    if default_bed_serving() is None:  # test_up_default, just before, leaves it serving
        rc, _doc, err = cli("up")
        assert rc == 0, err[-3000:]
    rc, doc, err = cli("bench", "-e", SMALL, "--streams", "100", "--stream-tokens", "16")
    assert rc == 0, err[-3000:]
    bench = doc["bench"]
    assert bench["completed"] == 20 and bench["failed"] == 0
    assert bench["output_throughput"] > 0
    lat = bench["latency_ms"]
    assert {"ttft", "tpot", "itl", "e2el"} <= set(lat)
    assert 0 < lat["ttft"]["median"] <= lat["ttft"]["p99"]
    assert Path(bench["plot"]).stat().st_size > 20_000
    streams = doc["streams"]
    assert streams["requests"] == 100 and streams["errors"] == 0, streams
    assert streams["tokens"] >= 100
