"""Data-parallel gate pieces: vllm_requests (concurrent chat completions) and the /metrics parser.

A real HTTP server on loopback stands in for vLLM's OpenAI API (it balances requests over two
"engines" only when they arrive at once, like vLLM's least-loaded balancer); the /metrics bodies
are the Prometheus text format as vLLM 0.32 writes it (engine label = data-parallel rank).
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible.module_utils.testing import patch_module_args

from multinode_vllm import PROJECT_DIR

sys.path.insert(0, str(Path(PROJECT_DIR) / "collections"))
from ansible_collections.multinode.vllm.plugins.filter.metrics import vllm_engines
from ansible_collections.multinode.vllm.plugins.module_utils._metrics import engine_check, engine_metrics
from ansible_collections.multinode.vllm.plugins.modules import vllm_requests


def metrics_body(success: dict[str, float], running: dict[str, float] | None = None) -> str:
    """/metrics as vLLM writes it: HELP/TYPE lines, one series per engine and finished_reason."""
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
    ]
    run = running or {}
    lines += [f'vllm:num_requests_running{{engine="{e}",model_name="tiny"}} {run.get(e, 0.0)}' for e in success]
    lines += [
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
    ]
    lines += [f'vllm:kv_cache_usage_perc{{engine="{e}",model_name="tiny"}} 0.25' for e in success]
    lines += [
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
    ]
    for e, n in success.items():
        lines.append(f'vllm:request_success_total{{engine="{e}",finished_reason="stop",model_name="tiny"}} 1.0')
        lines.append(f'vllm:request_success_total{{engine="{e}",finished_reason="length",model_name="tiny"}} {n - 1.0}')
        lines.append(f'vllm:request_success_total{{engine="{e}",finished_reason="abort",model_name="tiny"}} 0.0')
    lines += [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 1234.0',
    ]
    return "\n".join(lines) + "\n"


def test_engine_metrics_sums_each_engine_over_its_other_labels() -> None:
    got = engine_metrics(metrics_body({"0": 9.0, "1": 11.0}, running={"1": 2.0}))
    assert list(got) == ["0", "1"]
    assert got["0"]["success"] == 9.0  # stop 1 + length 8 + abort 0
    assert got["1"]["success"] == 11.0
    assert got["1"]["running"] == 2.0 and got["0"]["running"] == 0.0
    assert got["0"]["kv_cache_usage"] == 0.25
    assert "python_gc_objects_collected" not in json.dumps(got)


def test_engine_check_names_the_engine_that_served_nothing() -> None:
    verdict = engine_check(metrics_body({"0": 20.0, "1": 0.0}), 2)
    assert verdict["idle"] == ["1"] and verdict["missing"] == []
    assert "engine 1 finished no request (engine 0: 20, engine 1: 0)" in verdict["problem"]


def test_engine_check_names_a_missing_engine() -> None:
    verdict = engine_check(metrics_body({"0": 5.0}), 2)
    assert verdict["missing"] == ["1"]
    assert "no metrics from engine 1 of 2 (found: 0)" in verdict["problem"]


def test_engine_check_passes_when_every_engine_served() -> None:
    verdict = engine_check(metrics_body({"0": 3.0, "1": 4.0, "2": 2.0, "3": 1.0}), 4)
    assert verdict["problem"] == "" and verdict["idle"] == [] and verdict["missing"] == []


@pytest.mark.parametrize("expected", [0, -1, True, "2"])
def test_engine_check_refuses_a_bad_count(expected: Any) -> None:
    with pytest.raises(ValueError, match="expected must be the number of engines"):
        engine_check(metrics_body({"0": 1.0}), expected)


def test_filter_reports_bad_input_in_its_own_words() -> None:
    with pytest.raises(AnsibleFilterError, match="expected must be a whole number"):
        vllm_engines(metrics_body({"0": 1.0}), expected="two")
    with pytest.raises(AnsibleFilterError, match="not the Prometheus text format"):
        vllm_engines("vllm:request_success_total{engine=0 1\n", expected=1)
    assert vllm_engines(metrics_body({"0": 1.0, "1": 2.0}))["engines"]["1"]["success"] == 2.0
    assert vllm_engines(metrics_body({"0": 1.0, "1": 2.0}), expected="2")["problem"] == ""


class ChatServer:
    """/v1/chat/completions: requests overlapping in time go to engines 0, 1, 0, 1, ...; requests
    one after another all go to engine 0 (what vLLM's least-loaded balancer does when idle)."""

    def __init__(self, status: int = 200, text: str = "hello") -> None:
        self.engines = {"0": 0, "1": 0}
        self.in_flight, self.lock, self.seen_auth = 0, threading.Lock(), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.seen_auth.append(self.headers.get("Authorization"))
                with outer.lock:
                    engine = str(outer.in_flight % 2)
                    outer.in_flight += 1
                time.sleep(0.3)
                with outer.lock:
                    outer.in_flight -= 1
                    outer.engines[engine] += 1
                doc = {"choices": [{"message": {"content": text if body["min_tokens"] == 1 else ""}}]}
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def chat_server(request: pytest.FixtureRequest) -> Iterator[ChatServer]:
    srv = ChatServer(*getattr(request, "param", ()))
    yield srv
    srv.httpd.shutdown()


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        vllm_requests.main()
    return json.loads(capsys.readouterr().out)


def test_requests_go_out_at_once_and_reach_both_engines(
    chat_server: ChatServer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_main({"url": chat_server.url, "model": "tiny", "api_key": "s3cret", "count": 8}, capsys)
    assert out["sent"] == 8 and out["answered"] == 8 and out["errors"] == []
    assert chat_server.engines["0"] > 0 and chat_server.engines["1"] > 0
    assert chat_server.seen_auth == ["Bearer s3cret"] * 8


@pytest.mark.parametrize("chat_server", [(401,), (200, "")], indirect=True)
def test_requests_fail_with_the_reason(chat_server: ChatServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({"url": chat_server.url, "model": "tiny", "count": 3}, capsys)
    assert out["failed"] and out["answered"] == 0
    assert "3 of 3 chat completions sent at once" in out["msg"]
    assert ("401" in out["msg"]) or ("200 without text" in out["msg"])
    assert "Authorization" not in json.dumps(out) and chat_server.seen_auth == [None] * 3


def test_requests_refuse_a_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main({"url": "http://127.0.0.1:9", "model": "tiny", "count": 0}, capsys)
    assert out["failed"] and "count, max_tokens and timeout must be at least 1" in out["msg"]


def summary_body(
    engine: str, running: float, waiting: float, kv: float, queries: float, hits: float, gen: float
) -> str:
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="{engine}",model_name="tiny"}} {running}\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="{engine}",model_name="tiny"}} {waiting}\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f'vllm:kv_cache_usage_perc{{engine="{engine}",model_name="tiny"}} {kv}\n'
        "# TYPE vllm:prefix_cache_queries counter\n"
        f'vllm:prefix_cache_queries_total{{engine="{engine}",model_name="tiny"}} {queries}\n'
        "# TYPE vllm:prefix_cache_hits counter\n"
        f'vllm:prefix_cache_hits_total{{engine="{engine}",model_name="tiny"}} {hits}\n'
        "# TYPE vllm:generation_tokens counter\n"
        f'vllm:generation_tokens_total{{engine="{engine}",model_name="tiny"}} {gen}\n'
    )


def test_metrics_summary_per_engine_and_in_all() -> None:
    from ansible_collections.multinode.vllm.plugins.filter.metrics import vllm_metrics_summary

    # two engines, read 2 s apart: engine 0 generated 300 tokens (150/s), engine 1 100 (50/s)
    first = summary_body("0", 1, 0, 0.1, 100, 20, 1000) + summary_body("1", 0, 0, 0.0, 0, 0, 500)
    second = summary_body("0", 3, 2, 0.5, 200, 50, 1300) + summary_body("1", 1, 0, 0.25, 0, 0, 600)
    got = vllm_metrics_summary(first, second, 2)
    e0, e1, total = got["engines"]["0"], got["engines"]["1"], got["total"]
    assert (e0["running"], e0["waiting"], e0["kv_cache_usage"]) == (3, 2, 0.5)
    assert e0["prefix_cache_hit_rate"] == 0.25  # 50 hits / 200 queries
    assert e1["prefix_cache_hit_rate"] is None  # no query yet: not 0 %
    assert (e0["generation_tokens_per_s"], e1["generation_tokens_per_s"]) == (150.0, 50.0)
    assert total == {
        "engines": 2,
        "running": 4,
        "waiting": 2,
        "kv_cache_usage": 0.375,
        "prefix_cache_hit_rate": 0.25,
        "generation_tokens_per_s": 200.0,
    }
    assert got["window_s"] == 2.0
    with pytest.raises(AnsibleFilterError, match="seconds must be the positive time"):
        vllm_metrics_summary(first, second, 0)


def test_engine_check_counts_only_requests_since_before() -> None:
    # engine 1 served 7 requests in an earlier run and none of these: idle now
    before = metrics_body({"0": 2.0, "1": 7.0})
    after = metrics_body({"0": 10.0, "1": 7.0})
    verdict = engine_check(after, 2, before)
    assert verdict["idle"] == ["1"]
    assert verdict["engines"]["0"]["success_new"] == 8.0
    assert "engine 1 finished no request since the requests were sent (engine 0: 8, engine 1: 0)" in verdict["problem"]
    assert engine_check(metrics_body({"0": 3.0, "1": 8.0}), 2, before)["problem"] == ""
    assert vllm_engines(after, expected=2, before=before)["idle"] == ["1"]
