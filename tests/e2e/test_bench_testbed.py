"""The bench phase and the 100-stream load check on the local test bed (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_beds import cli_status, default_bed_serving

pytestmark = pytest.mark.e2e

pytest.importorskip("multinode_vllm.testbed.nodeenv")

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
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.stderr


# testbed.md's settings: a CPU vLLM with --max-num-seqs 4. Long enough (on 2 CPU cores: about 40 s
# of decoding) for `status` to read the load while it runs.
LOADED = "vllm_bench_input_len=32 vllm_bench_output_len=96 vllm_bench_num_prompts=40 vllm_bench_max_concurrency=4"


def test_bench_and_100_streams() -> None:
    if default_bed_serving() is None:  # test_up_default, just before, leaves it serving
        rc, _doc, err = cli("up")
        assert rc == 0, err[-3000:]
    env = {**os.environ, "CI": "true"}
    bench_proc = subprocess.Popen(
        [*CLI, "bench", "-e", LOADED, "--streams", "100", "--stream-tokens", "16", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    # `multinode-vllm status` while the bench runs: the running requests and the KV-cache usage move
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 600
    while bench_proc.poll() is None and time.monotonic() < deadline:
        _proc, st = cli_status(env)
        total = ((st or {}).get("metrics") or {}).get("total") or {}
        if total:
            seen.append(total)
            print(f"[bench] status during the bench: {json.dumps(total)}", flush=True)
        if any(t.get("running", 0) > 0 and t.get("kv_cache_usage", 0) > 0 for t in seen):
            break
    out, err = bench_proc.communicate(timeout=1800)
    assert bench_proc.returncode == 0, err[-3000:]
    doc = json.loads(out)
    loaded = [t for t in seen if t.get("running", 0) > 0 and t.get("kv_cache_usage", 0) > 0]
    assert loaded, f"status never showed running requests and KV-cache usage during the bench: {seen}"
    assert set(loaded[0]) >= {"engines", "running", "waiting", "kv_cache_usage", "prefix_cache_hit_rate"}
    # and at rest, after it: nothing running, the finished requests counted
    _proc, st = cli_status(env)
    rest = (st or {}).get("metrics") or {}
    print(f"[bench] status after the bench: {json.dumps(rest.get('total'))}", flush=True)
    assert rest["total"]["running"] == 0 and rest["total"]["waiting"] == 0, rest
    assert sum(e["finished_requests"] for e in rest["engines"].values()) >= 40 + 100, rest

    bench = doc["bench"]
    assert bench["completed"] == 40 and bench["failed"] == 0
    assert bench["output_throughput"] > 0
    lat = bench["latency_ms"]
    assert {"ttft", "tpot", "itl", "e2el"} <= set(lat)
    assert 0 < lat["ttft"]["median"] <= lat["ttft"]["p99"]
    assert Path(bench["plot"]).stat().st_size > 20_000
    streams = doc["streams"]
    assert streams["requests"] == 100 and streams["errors"] == 0, streams
    assert streams["tokens"] >= 100
    # the server's side of the streams (vLLM's /metrics before, during and after them)
    load = streams["metrics"]
    print(f"[bench] the streams in vLLM's metrics: {json.dumps(load)}", flush=True)
    assert load["source"] == "vllm" and load["requests"] >= 100, load
    assert load["kv_cache_usage_peak"] is not None and load["kv_cache_usage_peak"] > 0, load
    assert load["prefix_cache_hit_rate"] is not None and load["output_tokens_per_s"] > 0, load
