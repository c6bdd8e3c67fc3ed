"""`multinode-vllm bench`: result summary, plot, the vllm_bench role (real run), streaming load."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from multinode_vllm.module_utils._metrics import load_summary

from multinode_vllm.cli import main
from multinode_vllm.commands.bench import (
    Endpoint,
    chat_once,
    distributions,
    format_load,
    format_summary,
    percentiles,
    plot,
    stream_load,
    stream_load_with_metrics,
    summary,
)
from multinode_vllm.progress import UsageError

# Stands in for `vllm bench serve` on the head: writes a result shaped like vLLM 0.32's
# (--save-detailed), from the arguments the role passes.
FAKE_VLLM = textwrap.dedent(
    """\
    import argparse, json, os, random
    p = argparse.ArgumentParser()
    p.add_argument("cmd", nargs=2)
    for a in ("--num-prompts", "--max-concurrency", "--random-output-len"):
        p.add_argument(a, type=int)
    p.add_argument("--result-dir"); p.add_argument("--result-filename")
    a, rest = p.parse_known_args()
    assert a.cmd == ["bench", "serve"], a.cmd
    if os.environ.get("FAKE_EXIT"):
        raise SystemExit("connection refused, key was " + os.environ.get("OPENAI_API_KEY", ""))
    fail = int(os.environ.get("FAKE_FAILED", "0"))
    rnd = random.Random(1)
    n = a.num_prompts
    ttfts = [0.02 + rnd.random() * 0.03 for _ in range(n)]
    itls = [[0.005 + rnd.random() * 0.002 for _ in range(a.random_output_len - 1)] for _ in range(n)]
    res = {"num_prompts": n, "max_concurrency": a.max_concurrency, "completed": n - fail,
           "failed": fail, "duration": 2.0, "request_throughput": n / 2.0,
           "output_throughput": n * a.random_output_len / 2.0, "total_token_throughput": 1.0,
           "ttfts": ttfts, "itls": itls, "latencies": [t + sum(i) for t, i in zip(ttfts, itls)],
           "median_ttft_ms": 35.0, "p99_ttft_ms": 49.0, "argv": rest,
           "api_key": os.environ.get("OPENAI_API_KEY")}
    os.makedirs(a.result_dir, exist_ok=True)
    with open(os.path.join(a.result_dir, a.result_filename), "w") as f:
        json.dump(res, f)
    """
)


def synthetic_result(n: int = 50, out_len: int = 8) -> dict[str, object]:
    rnd = random.Random(7)
    ttfts = [0.01 + rnd.random() / 100 for _ in range(n)]
    itls = [[0.004 + rnd.random() / 1000 for _ in range(out_len - 1)] for _ in range(n)]
    return {
        "num_prompts": n,
        "completed": n,
        "max_concurrency": 4,
        "duration": 1.5,
        "request_throughput": n / 1.5,
        "output_throughput": n * out_len / 1.5,
        "total_token_throughput": 2 * n * out_len / 1.5,
        "mean_ttft_ms": 15.0,
        "median_ttft_ms": 14.5,
        "p99_ttft_ms": 19.8,
        "p90_tpot_ms": 4.9,
        "p99.9_itl_ms": 5.1,
        "mean_e2el_ms": 45.0,
        "std_ttft_ms": 2.0,
        "median_ttft_s": 1.0,  # not a metric key: ignored
        "ttfts": ttfts,
        "itls": itls,
    }


# ----------------------------------------------------------------------- summary and plot
def test_percentiles_and_summary() -> None:
    res = synthetic_result()
    pct = percentiles(res)
    assert list(pct) == ["ttft", "tpot", "itl", "e2el"]
    assert pct["ttft"] == {"mean": 15.0, "median": 14.5, "p99": 19.8, "std": 2.0}
    assert pct["itl"] == {"p99.9": 5.1}
    s = summary(res)
    assert s["failed"] == 0 and s["completed"] == 50
    text = format_summary(s)
    assert "requests: 50/50 ok, 0 failed, concurrency 4, 1.5s" in text
    assert "266.7 output tok/s" in text
    header = text.splitlines()[2].split()
    assert header == ["ms", "mean", "median", "std", "p90", "p99", "p99.9"]
    assert text.splitlines()[3].split() == ["TTFT", "15.00", "14.50", "2.00", "19.80"]


def test_distributions_from_per_request_lists() -> None:
    res = {"ttfts": [0.010, 0.020, 0.0], "itls": [[0.001, 0.003], [0.002], []]}
    d = distributions(res)
    assert d["ttft"] == pytest.approx([10.0, 20.0])  # a failed request (ttft 0) is left out
    assert d["itl"] == pytest.approx([1.0, 3.0, 2.0])
    assert d["tpot"] == pytest.approx([2.0, 2.0])
    assert d["e2el"] == pytest.approx([14.0, 22.0])
    res["latencies"] = [0.5, 0.25, 0.0]
    assert distributions(res)["e2el"] == pytest.approx([500.0, 250.0])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    png = plot(synthetic_result(), tmp_path / "sub" / "lat.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # four panels with axes and text, not an empty canvas


def test_plot_needs_per_request_data(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="per-request"):
        plot({"completed": 3}, tmp_path / "x.png")


def test_bench_result_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.json"
    f.write_text(json.dumps(synthetic_result()))
    assert main(["bench", "--result", str(f), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"]["plot"] == str(tmp_path / "r.png")
    assert doc["bench"]["latency_ms"]["ttft"]["p99"] == 19.8
    assert (tmp_path / "r.png").stat().st_size > 20_000


# ------------------------------------------------------------- the role, really run locally
@pytest.fixture
def head(tmp_path: Path) -> tuple[Path, Path]:
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"[ray_head]\nhead ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    fake = tmp_path / "fake_vllm.py"
    fake.write_text(FAKE_VLLM)
    return inv, fake


def bench_argv(inv: Path, fake: Path, tmp_path: Path, *extra: str) -> list[str]:
    cli = json.dumps({"vllm_bench_cli": [sys.executable, str(fake)]})
    return [
        "bench",
        "-i",
        str(inv),
        "-e",
        cli,
        "-e",
        f"vllm_bench_num_prompts=20 vllm_bench_output_len=16 vllm_bench_remote_dir={tmp_path / 'remote'}",
        "-e",
        "vllm_bench_model=tiny vllm_bench_tokenizer=/models/tiny",
        "--results-dir",
        str(tmp_path / "results"),
        *extra,
    ]


def test_bench_phase_runs_fetches_summarises_and_plots(
    head: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv, fake = head
    rc = main([*bench_argv(inv, fake, tmp_path, "-e", "vllm_bench_api_key=s3cret"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0, doc
    result_file = Path(doc["bench"]["result_json"])
    assert result_file.parent == tmp_path / "results"
    raw = json.loads(result_file.read_text())
    # the role's command line: the seed's benchmark, with this inventory's sizes
    argv = raw["argv"]
    assert argv[argv.index("--backend") + 1] == "openai-chat"
    assert argv[argv.index("--base-url") + 1] == "http://127.0.0.1:8000"
    assert argv[argv.index("--percentile-metrics") + 1] == "ttft,tpot,itl,e2el"
    assert "--save-detailed" in argv
    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    assert argv[argv.index("--tokenizer") + 1] == "/models/tiny"
    # the key reaches the benchmark through the environment, never on its command line
    assert raw["api_key"] == "s3cret" and "s3cret" not in " ".join(argv)
    assert doc["bench"]["completed"] == 20 and doc["bench"]["failed"] == 0
    assert Path(doc["bench"]["plot"]).stat().st_size > 20_000
    summary_ = doc["run"]["exported"]["vllm_bench_summary"]
    assert summary_["completed"] == 20 and "ttfts" not in summary_


def test_bench_phase_fails_when_requests_fail(
    head: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv, fake = head
    env = json.dumps({"vllm_bench_environment": {"FAKE_FAILED": "3"}})
    rc = main(bench_argv(inv, fake, tmp_path, "-e", env))
    err = capsys.readouterr().err
    assert rc == 1
    assert "FAILED: host head, task 'Stop if requests failed'" in err
    assert "3 of 20 requests failed (vllm_bench_max_failed is 0)" in err


def test_bench_command_failure_shows_stderr_without_the_key(
    head: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv, fake = head
    env = json.dumps({"vllm_bench_environment": {"FAKE_EXIT": "1"}, "vllm_bench_api_key": "s3cret"})
    rc = main(bench_argv(inv, fake, tmp_path, "-e", env))
    err = capsys.readouterr().err
    assert rc == 1
    assert "FAILED: host head, task 'Stop if vllm bench serve failed'" in err
    assert "vllm bench serve exited 1 against http://127.0.0.1:8000" in err
    assert "connection refused, key was ****" in err
    assert "s3cret" not in err


# ------------------------------------------------------------------ streaming load client
class FakeSSEServer:
    """An OpenAI-style streaming endpoint on loopback: chunked SSE, usage in the last event."""

    def __init__(self, tokens: int = 5, fail_every: int = 0, metrics: str | None = None) -> None:
        self.tokens, self.fail_every = tokens, fail_every
        self.metrics_style = metrics  # None: /metrics answers 404; "vllm" or "dynamo": that server's series
        self.count = 0
        self.streams_done = 0
        self.streams_running = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        heads = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in request.split(b"\r\n")[1:] if h)
        }
        length = int(heads.get(b"content-length", b"0"))
        body = json.loads(await reader.readexactly(length)) if length else {}
        if request.startswith(b"GET /metrics"):
            if self.metrics_style is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                payload = self.metrics_text().encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
            await writer.drain()
            writer.close()
            return
        self.count += 1
        if request.startswith(b"GET /v1/models"):
            payload = json.dumps({"data": [{"id": "tiny"}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        elif self.fail_every and self.count % self.fail_every == 0:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        elif request.startswith(b"POST /v1/chat/completions") and body.get("stream"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            events: list[dict[str, Any]] = [{"choices": [{"delta": {"content": f"t{i} "}}]} for i in range(self.tokens)]
            events.append({"choices": [], "usage": {"completion_tokens": self.tokens}})
            self.streams_running += 1
            for e in events:
                chunk = b"data: " + json.dumps(e).encode() + b"\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0.001 if self.metrics_style is None else 0.3)
            done = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            self.streams_running -= 1
            self.streams_done += 1
        else:
            payload = json.dumps({"choices": [{"message": {"content": "hello there"}}]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()
        writer.close()

    def metrics_text(self) -> str:
        """/metrics as vLLM (one engine) or Dynamo's frontend writes it, from what was served so far:
        each stream used 2 KV blocks of 100 while it ran; half of each prompt's 20 tokens were cached."""
        done, running = self.streams_done, self.streams_running
        if self.metrics_style == "vllm":
            lines = [
                "# TYPE vllm:num_requests_running gauge",
                f'vllm:num_requests_running{{engine="0",model_name="tiny"}} {running}',
                "# TYPE vllm:kv_cache_usage_perc gauge",
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="tiny"}} {running * 2 / 100}',
                "# TYPE vllm:request_success_total counter",
                f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="tiny"}} {done}',
                "# TYPE vllm:prefix_cache_queries_total counter",
                f'vllm:prefix_cache_queries_total{{engine="0",model_name="tiny"}} {done * 20}',
                "# TYPE vllm:prefix_cache_hits_total counter",
                f'vllm:prefix_cache_hits_total{{engine="0",model_name="tiny"}} {done * 10}',
                "# TYPE vllm:generation_tokens_total counter",
                f'vllm:generation_tokens_total{{engine="0",model_name="tiny"}} {done * self.tokens}',
            ]
        else:
            lines = [
                "# TYPE dynamo_frontend_requests_total counter",
                f'dynamo_frontend_requests_total{{model="tiny",request_type="stream",status="success"}} {done}',
                "# TYPE dynamo_frontend_worker_active_decode_blocks gauge",
                f'dynamo_frontend_worker_active_decode_blocks{{model="tiny",worker_id="1"}} {running * 2}',
                "# TYPE dynamo_frontend_model_total_kv_blocks gauge",
                'dynamo_frontend_model_total_kv_blocks{model="tiny",worker_id="1"} 100',
                "# TYPE dynamo_frontend_cached_tokens histogram",
                f'dynamo_frontend_cached_tokens_bucket{{model="tiny",le="+Inf"}} {done}',
                f'dynamo_frontend_cached_tokens_sum{{model="tiny"}} {done * 10}',
                f'dynamo_frontend_cached_tokens_count{{model="tiny"}} {done}',
                "# TYPE dynamo_frontend_input_sequence_tokens histogram",
                f'dynamo_frontend_input_sequence_tokens_bucket{{model="tiny",le="+Inf"}} {done}',
                f'dynamo_frontend_input_sequence_tokens_sum{{model="tiny"}} {done * 20}',
                f'dynamo_frontend_input_sequence_tokens_count{{model="tiny"}} {done}',
                "# TYPE dynamo_frontend_output_tokens counter",
                f'dynamo_frontend_output_tokens_total{{model="tiny"}} {done * self.tokens}',
            ]
        return "\n".join(lines) + "\n"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", 0, backlog=200))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> FakeSSEServer:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def sse() -> Iterator[FakeSSEServer]:
    with FakeSSEServer(tokens=7) as s:
        yield s


def test_100_streams_count_tokens_and_no_errors(sse: FakeSSEServer) -> None:
    stats = asyncio.run(stream_load(Endpoint(f"http://127.0.0.1:{sse.port}"), n=100, timeout=30))
    assert (stats.requests, stats.ok, stats.errors) == (100, 100, 0)
    assert stats.tokens == 700 and stats.chunks == 700
    assert len(stats.ttft_ms) == 100 and stats.wall_s > 0
    assert stats.summary()["tokens_per_s"] > 0


def test_streams_count_errors() -> None:
    with FakeSSEServer(tokens=3, fail_every=4) as s:
        stats = asyncio.run(stream_load(Endpoint(f"http://127.0.0.1:{s.port}", model="tiny"), n=20, timeout=30))
    assert stats.requests == 20
    assert stats.errors == 5 and stats.ok == 15
    assert stats.tokens == 45
    assert stats.error_samples[0].startswith("RuntimeError: HTTP 503")


@pytest.mark.parametrize("style", ["vllm", "dynamo"])
def test_streams_report_what_the_servers_metrics_saw(style: str) -> None:
    """The 100-stream check reads the endpoint's /metrics before, during (KV-usage peak) and after."""
    with FakeSSEServer(tokens=4, metrics=style) as s:
        ep = Endpoint(f"http://127.0.0.1:{s.port}", model="tiny")
        stats, load = asyncio.run(stream_load_with_metrics(ep, n=30, max_tokens=4, sample_every=0.1))
    assert (stats.ok, stats.errors) == (30, 0)
    assert load["source"] == style and load["requests"] == 30, load
    assert load["prefix_cache_hit_rate"] == 0.5  # 10 of each 20 prompt tokens cached
    assert load["kv_cache_usage"] == 0.0  # nothing runs after the load
    assert load["kv_cache_usage_peak"] is not None and 0 < load["kv_cache_usage_peak"] <= 0.6, load
    assert load["output_tokens_per_s"] > 0
    assert "prefix-cache hit rate 50.0 %" in format_load(load)


def test_streams_without_metrics_still_count(sse: FakeSSEServer) -> None:
    stats, load = asyncio.run(stream_load_with_metrics(Endpoint(f"http://127.0.0.1:{sse.port}"), n=10))
    assert stats.ok == 10 and load == {"error": "/metrics before the load: HTTP Error 404: Not Found"}
    assert format_load(load).startswith("server metrics: not read (")


def test_load_summary_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="neither vLLM's"):
        load_summary("", "python_gc_objects_collected_total 1\n", 1.0)
    with pytest.raises(ValueError, match="positive length"):
        load_summary("", "", 0)


def test_chat_once(sse: FakeSSEServer) -> None:
    assert chat_once(Endpoint(f"http://127.0.0.1:{sse.port}"), "hi") == "hello there"


def test_endpoint_from_the_inventory_uses_the_heads_management_address(tmp_path: Path) -> None:
    from multinode_vllm.commands.bench import _endpoint_from_inventory, endpoint_via_mgmt

    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  children:\n    ray_head:\n      hosts:\n        node1:\n          ansible_host: 10.9.0.11\n"
        "          multinode_api_key: k\n    ray_workers:\n      hosts:\n        node2:\n"
        "          ansible_host: 10.9.0.12\n"
    )
    ep = _endpoint_from_inventory(inv, "http://10.9.1.11:8123/v1")
    assert ep == Endpoint("http://10.9.0.11:8123", api_key="k")
    assert _endpoint_from_inventory(inv, None).base_url == "http://10.9.0.11:8000"
    assert endpoint_via_mgmt(None, "1.2.3.4", 9000) == "http://1.2.3.4:9000"


# ------------------------------------------------------------------------------ load sweep
def test_bench_sweep_runs_one_point_per_concurrency_and_plots_them(
    head: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv, fake = head
    rc = main([*bench_argv(inv, fake, tmp_path), "--concurrency", "4,1", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0, doc
    files = doc["run"]["exported"]["vllm_bench_result_files"]
    # one `vllm bench serve` per point, in the order given, each with its own --max-concurrency
    assert [json.loads(Path(f).read_text())["max_concurrency"] for f in files] == [4, 1]
    sweep = doc["sweep"]
    assert [p["max_concurrency"] for p in sweep["points"]] == [1, 4]  # the table and plot by load
    assert sweep["points"][0]["ttft_ms"] == {"median": 35.0, "p99": 49.0}
    assert sweep["points"][0]["output_throughput"] == 20 * 16 / 2.0
    assert Path(sweep["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(sweep["plot"]).stat().st_size > 20_000


def test_sweep_table_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    from multinode_vllm.commands.bench import concurrency_list, format_sweep, sweep_points

    rows = sweep_points([{**synthetic_result(), "max_concurrency": 8}, synthetic_result()])
    assert [r["max_concurrency"] for r in rows] == [4, 8]
    assert rows[0]["itl_ms"] == {"median": None, "p99": None}  # not in the result: shown as -
    table = format_sweep(rows).splitlines()
    assert table[1].split() == ["4", "33.33", "266.7", "14/20", "-/-"]
    assert concurrency_list("1, 4,16") == [1, 4, 16]
    for bad in ("", "0,4", "four"):
        with pytest.raises(Exception, match="positive integers separated by commas"):
            concurrency_list(bad)
    with pytest.raises(SystemExit):
        main(["bench", "--concurrency", "0"])
    assert "positive integers separated by commas" in capsys.readouterr().err


def test_bench_role_refuses_a_bad_concurrency_list(
    head: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv, fake = head
    rc = main([*bench_argv(inv, fake, tmp_path, "-e", json.dumps({"vllm_bench_concurrencies": [4, -1]}))])
    err = capsys.readouterr().err
    assert rc != 0
    assert "vllm_bench_concurrencies ([4, -1]) must be positive integers" in " ".join(err.split())
