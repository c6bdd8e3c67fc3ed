"""benchmarks/overhead.py: its pure parts (units, task counts, ratios, throughput statistics, table,
chart) and its orchestration with fakes; the benchmark itself runs on a test bed, never here."""

from __future__ import annotations

import importlib.util
import json
import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from multinode_vllm import PROJECT_DIR
from multinode_vllm.api import RunResult, hosts_from_stats
from multinode_vllm.commands.bench import Endpoint

spec = importlib.util.spec_from_file_location("overhead", Path(PROJECT_DIR) / "benchmarks" / "overhead.py")
assert spec and spec.loader
overhead = importlib.util.module_from_spec(spec)
sys.modules["overhead"] = overhead  # dataclasses look their module up while the file runs
spec.loader.exec_module(overhead)

RAY_UNIT = """\
# /etc/systemd/system/ray-head.service
[Service]
EnvironmentFile=/etc/multinode-vllm/ray-head.env
ExecStart="/v/bin/ray" "start" "--head" "--block" "--node-ip-address=10.200.1.11" "--port=6379"
KillMode=mixed
"""
VLLM_UNIT = (
    "[Service]\n"
    "EnvironmentFile=-/etc/multinode-vllm/vllm.env\n"
    'ExecStart="/v/bin/vllm" "serve" "/m" "--served-model-name" "tiny" '
    '"--compilation-config" "{\\"mode\\":2}" "--x" "100%%" "a$$b"\n'
)


def test_exec_start_undoes_systemd_quoting() -> None:
    argv, env = overhead.exec_start(VLLM_UNIT)
    assert env == "/etc/multinode-vllm/vllm.env"
    assert argv == ["/v/bin/vllm", "serve", "/m", "--served-model-name", "tiny", "--compilation-config", '{"mode":2}',
                    "--x", "100%", "a$b"]  # fmt: skip


def test_ray_by_hand_drops_block_and_sources_the_env_file() -> None:
    cmd = overhead.by_hand_command(*overhead.exec_start(RAY_UNIT), "/tmp/r.log")
    assert cmd.startswith("set -a; . /etc/multinode-vllm/ray-head.env; set +a; ")
    words = shlex.split(cmd.split("set +a; ", 1)[1])
    assert words[:3] == ["/v/bin/ray", "start", "--head"]
    assert "--block" not in words
    assert "nohup" not in words


def test_vllm_by_hand_runs_in_the_background_and_prints_its_pid() -> None:
    argv, env = overhead.exec_start(VLLM_UNIT)
    cmd = overhead.by_hand_command(argv, env, "/tmp/v.log")
    assert "nohup /v/bin/vllm serve /m" in cmd
    assert cmd.endswith("& echo $!")
    assert shlex.quote('{"mode":2}') in cmd


def test_env_value_reads_the_api_key() -> None:
    assert overhead.env_value("HF_HOME=/h\nVLLM_API_KEY='k 1'\n", "VLLM_API_KEY") == "k 1"
    assert overhead.env_value("HF_HOME=/h\n", "VLLM_API_KEY") is None


# ------------------------------------------------------------------------ converge: tasks and ratios
def runner_result(stats: dict[str, dict[str, int]]) -> dict[str, Any]:
    """A runner result dict as multinode_vllm.run(...).to_dict() returns it, from runner .stats."""
    return RunResult(
        status="successful", rc=0, hosts=hosts_from_stats(stats), phases=(), endpoint=None, elapsed=1.0
    ).to_dict()


def test_task_counts_count_a_changed_task_once() -> None:
    # ansible counts a changed task in ok and in changed, a rescued failure in rescued only
    result = runner_result(
        {
            "ok": {"node1": 120, "node2": 60},
            "changed": {"node1": 30, "node2": 0},
            "skipped": {"node1": 40, "node2": 25},
            "rescued": {"node1": 1},
            "ignored": {"node2": 2},
            "processed": {"node1": 1, "node2": 1},
        }
    )
    counts = overhead.task_counts(result)
    assert counts == {
        "node1": {"tasks": 161, "ok": 120, "changed": 30, "skipped": 40},
        "node2": {"tasks": 85, "ok": 60, "changed": 0, "skipped": 25},
    }
    assert overhead.changed_total(result) == 30


def test_converge_tears_down_then_times_first_run_and_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    first = runner_result({"ok": {"node1": 100, "node2": 50}, "changed": {"node1": 20, "node2": 5}})
    rerun = runner_result({"ok": {"node1": 90, "node2": 40}, "skipped": {"node1": 10}})
    outcomes = iter([(3.0, {}), (98.04, first), (59.5, rerun)])

    def fake(inventory: str, playbook: str, extra_vars: Any = None) -> tuple[float, dict[str, Any]]:
        calls.append((playbook, dict(extra_vars or {})))
        return next(outcomes)

    monkeypatch.setattr(overhead, "timed_run", fake)
    doc = overhead.converge("inv", {"vllm_serve_pipeline_parallel_size": 2})
    assert [c[0] for c in calls] == ["playbooks/teardown.yml", "site.yml", "site.yml"]
    assert all(c[1] == {"vllm_serve_pipeline_parallel_size": 2} for c in calls)
    assert doc["first_s"] == 98.04 and doc["rerun_s"] == 59.5
    assert doc["first_changed"] == 25 and doc["rerun_changed"] == 0
    assert doc["first_tasks"]["node1"]["tasks"] == 100
    assert doc["rerun_tasks"]["node1"]["tasks"] == 100 and doc["rerun_tasks"]["node2"]["tasks"] == 40
    assert doc["first_run"] is first


def test_ratio_refuses_missing_and_zero() -> None:
    assert overhead.ratio(98.0, 42.5) == 2.306
    assert overhead.ratio(None, 42.5) is None
    assert overhead.ratio(1.0, 0) is None
    assert overhead.ratio("1", 2.0) is None


def full_doc() -> dict[str, Any]:
    tasks = {"node1": {"tasks": 170, "ok": 130, "changed": 40, "skipped": 40}, "node2": {"tasks": 90}}
    rerun_tasks = {"node1": {"tasks": 160}, "node2": {"tasks": 80}}
    return {
        "date": "2026-03-04T05:06:07+00:00",
        "first_s": 98.0,
        "rerun_s": 63.0,
        "rerun_changed": 0,
        "by_hand_s": 42.5,
        "first_tasks": tasks,
        "rerun_tasks": rerun_tasks,
        "scale": {"nodes": 8, "first_s": 212.66, "rerun_s": 173.25, "rerun_changed": 0},
        "throughput": overhead.throughput_summary(
            [{"output_throughput": v, "completed": 200, "num_prompts": 200, "failed": 0} for v in (100.0, 110.0, 90.0)],
            [{"output_throughput": v, "completed": 200, "num_prompts": 200, "failed": 0} for v in (98.0, 97.0, 99.0)],
        )
        | {"settings": {"num_prompts": 200, "runs": 3}},
    }


def test_summarize_fills_the_ratios_of_the_issue() -> None:
    doc = full_doc()
    s = overhead.summarize(doc)
    assert doc["first_over_by_hand"] == 2.306
    assert doc["rerun_over_first"] == 0.643
    assert doc["scale"]["first_over_2"] == 2.17 and doc["scale"]["rerun_over_2"] == 2.75
    assert s["first_over_by_hand"] == 2.306 and s["rerun_over_first"] == 0.643
    assert s["scale_nodes"] == 8 and s["scale_first_over_2"] == 2.17 and s["scale_rerun_over_2"] == 2.75
    assert s["first_tasks"] == {"node1": 170, "node2": 90} and s["rerun_tasks"] == {"node1": 160, "node2": 80}
    assert s["ours_tok_s"] == 100.0 and s["hand_tok_s"] == 98.0 and s["throughput_ratio"] == 1.0204
    assert overhead.summarize(doc) == s  # idempotent


def test_summarize_leaves_out_what_was_not_measured() -> None:
    doc = {"first_s": 90.0, "rerun_s": 9.0, "rerun_changed": 0}
    s = overhead.summarize(doc)
    assert s["rerun_over_first"] == 0.1
    assert "first_over_by_hand" not in s and "scale_nodes" not in s and "throughput_ratio" not in s


# ------------------------------------------------------------------------ throughput
def bench_result(tok_s: float, completed: int = 200, **extra: Any) -> dict[str, Any]:
    """A `vllm bench serve --save-result` JSON (field names of vllm/benchmarks/serve.py)."""
    return {
        "date": "20260304-050607",
        "endpoint_type": "openai-chat",
        "backend": "openai-chat",
        "model_id": "tiny-llama",
        "tokenizer_id": "/srv/m",
        "num_prompts": 200,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": 4,
        "duration": 3200 / tok_s,
        "completed": completed,
        "failed": 200 - completed,
        "total_input_tokens": 6400,
        "total_output_tokens": 3200,
        "request_throughput": tok_s / 16,
        "request_goodput": None,
        "output_throughput": tok_s,
        "total_token_throughput": tok_s * 3,
        "mean_ttft_ms": 50.0,
        "median_ttft_ms": 45.0,
        "median_tpot_ms": 12.5,
        "p99_ttft_ms": 120.0,
        **extra,
    }


def test_bench_run_summary_keeps_the_scalars_of_a_result() -> None:
    r = overhead.bench_run_summary(bench_result(160.0, completed=198, ttfts=[0.1] * 198, itls=[[0.01]] * 198))
    assert r["output_throughput"] == 160.0 and r["completed"] == 198 and r["failed"] == 2
    assert r["num_prompts"] == 200 and r["median_ttft_ms"] == 45.0
    assert "ttfts" not in r and "itls" not in r and "request_goodput" not in r
    older = bench_result(100.0, completed=190)
    del older["failed"]
    assert overhead.bench_run_summary(older)["failed"] == 10
    with pytest.raises(ValueError, match="output_throughput"):
        overhead.bench_run_summary({"completed": 3})


def test_throughput_summary_mean_stdev_and_ratio() -> None:
    ours = [overhead.bench_run_summary(bench_result(v)) for v in (100.0, 110.0, 90.0)]
    hand = [overhead.bench_run_summary(bench_result(v, completed=199)) for v in (100.0, 100.0, 100.0)]
    s = overhead.throughput_summary(ours, hand)
    assert s["ours"]["output_tok_s"] == [100.0, 110.0, 90.0]
    assert s["ours"]["mean"] == 100.0 and s["ours"]["stdev"] == 10.0 and s["ours"]["n"] == 3
    assert s["ours"]["min"] == 90.0 and s["ours"]["max"] == 110.0
    assert s["hand"]["stdev"] == 0.0 and s["hand"]["failed_requests"] == 3
    assert s["ratio"] == 1.0
    assert s["ratio_se"] == pytest.approx(0.0577, abs=1e-4)  # 10 % spread over 3 runs
    assert overhead.throughput_summary(ours[:1], hand[:1])["ours"]["stdev"] == 0.0


def test_alternation_is_counterbalanced_abba() -> None:
    assert overhead.alternation(3) == [("ours", 1), ("hand", 1), ("hand", 2), ("ours", 2), ("ours", 3), ("hand", 3)]
    # over any even number of runs each arm sits first in half the pairs: a linear drift cancels out
    for runs in (2, 4, 6):
        order = overhead.alternation(runs)
        pos = {arm: sum(k for k, (a, _) in enumerate(order) if a == arm) for arm in ("ours", "hand")}
        assert pos["ours"] == pos["hand"], (runs, order)
        assert sorted(order) == sorted((a, i) for i in range(1, runs + 1) for a in ("ours", "hand"))


def test_bench_serve_argv_is_the_roles_without_the_key() -> None:
    argv = overhead.bench_serve_argv(
        ["/v/bin/vllm"],
        base_url="http://127.0.0.1:8000",
        model="tiny",
        tokenizer="/srv/m",
        num_prompts=200,
        input_len=32,
        output_len=16,
        max_concurrency=4,
        seed=0,
        result_dir="/var/tmp/x",
        result_filename="r.json",
    )
    assert argv[:3] == ["/v/bin/vllm", "bench", "serve"]
    pairs = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
    assert pairs["--backend"] == "openai-chat" and pairs["--endpoint"] == "/v1/chat/completions"
    assert pairs["--dataset-name"] == "random" and pairs["--num-prompts"] == "200"
    assert pairs["--random-input-len"] == "32" and pairs["--random-output-len"] == "16"
    assert pairs["--max-concurrency"] == "4" and pairs["--result-dir"] == "/var/tmp/x"
    assert pairs["--model"] == "tiny" and pairs["--tokenizer"] == "/srv/m"
    assert "--save-result" in argv and "--api-key" not in argv


def test_keyed_command_passes_the_key_on_stdin_only() -> None:
    cmd = overhead.keyed_command(["printenv", "OPENAI_API_KEY"], with_key=True)
    assert "s3cret" not in cmd
    out = subprocess.run(["/bin/sh", "-c", cmd], input="s3cret\n", capture_output=True, text=True, check=True)
    assert out.stdout == "s3cret\n"
    assert overhead.keyed_command(["vllm", "a b"], with_key=False) == "vllm 'a b'"


def test_throughput_starts_each_run_fresh_in_the_counterbalanced_order(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    tok = iter([100.0, 98.0, 102.0, 99.0, 101.0, 100.0])
    monkeypatch.setattr(overhead, "sh", lambda *a, **k: log.append("mkdir") or "")
    monkeypatch.setattr(overhead, "wait_chat", lambda *a, **k: log.append("chat"))
    monkeypatch.setattr(overhead, "stop_units", lambda d: log.append("stop units"))
    monkeypatch.setattr(overhead, "start_units", lambda d, t: log.append("start units") or 20.0)
    monkeypatch.setattr(overhead, "start_by_hand", lambda d, t: log.append("start hand") or (15.0, "4242"))
    monkeypatch.setattr(overhead, "stop_by_hand", lambda d, pid: log.append(f"stop hand {pid}"))

    def bench(d: Any, s: Any, name: str, timeout: float) -> dict[str, Any]:
        log.append("bench " + name.rsplit("-", 1)[1])
        return overhead.bench_run_summary(bench_result(next(tok)))

    monkeypatch.setattr(overhead, "bench_once", bench)
    d = overhead.Deployment(
        "node1", (), {"node1": {}}, (["/v/ray"], None), {}, (["/v/vllm", "serve", "/m"], None), Endpoint("x")
    )
    out = overhead.throughput(d, overhead.BenchSettings(200, 32, 16, 4), 3, 60, 600)
    benches = [e for e in log if e.startswith("bench")]
    assert benches == [f"bench {a}{i}.json" for a, i in overhead.alternation(3)]
    # every run follows a fresh start of its arm, ours 1 too (the units site.yml left are restarted)
    assert log[:5] == ["mkdir", "stop units", "start units", "chat", "bench ours1.json"]
    assert log[5:9] == ["stop units", "start hand", "chat", "bench hand1.json"]
    assert log[9:13] == ["stop hand 4242", "start hand", "chat", "bench hand2.json"]
    assert log.count("start hand") == 3 and log.count("start units") == 3 and log[-1] == "stop hand 4242"
    # the order is ours1 hand1 hand2 ours2 ours3 hand3
    assert out["ours"]["output_tok_s"] == [100.0, 99.0, 101.0] and out["hand"]["output_tok_s"] == [98.0, 102.0, 100.0]
    assert out["hand_start_s"] == [15.0, 15.0, 15.0] and out["ours_restart_s"] == [20.0, 20.0, 20.0]
    assert out["order"] == ["ours1", "hand1", "hand2", "ours2", "ours3", "hand3"]
    assert out["settings"]["num_prompts"] == 200 and out["settings"]["runs"] == 3


def test_bench_settings_flags_then_inventory_then_defaults() -> None:
    args = overhead.parse_args(["--throughput", "--output-len", "64"])
    hv = {"vllm_bench_input_len": 32, "vllm_bench_output_len": 16, "vllm_bench_max_concurrency": "{{ c }}"}
    s = overhead.bench_settings(args, hv)
    assert (s.num_prompts, s.input_len, s.output_len, s.max_concurrency) == (200, 32, 64, 16)


def test_parse_args_defaults_and_refusals() -> None:
    args = overhead.parse_args(["--nodes-compare", "8", "--nodes-var", "validate_ignore_plan=true"])
    assert args.throughput_runs == 3 and args.num_prompts == 200 and args.nodes_compare == 8
    assert args.nodes_var == [("validate_ignore_plan", True)]
    with pytest.raises(SystemExit):
        overhead.parse_args(["--throughput-runs", "0"])
    with pytest.raises(SystemExit):
        overhead.parse_args(["--nodes-var", "novalue"])


def test_unit_argv_helpers() -> None:
    argv = ["/v/vllm", "serve", "/srv/m", "--served-model-name", "tiny", "--port=8001", "--host", "0.0.0.0"]
    assert overhead.arg_value(argv, "--port") == "8001" and overhead.arg_value(argv, "--served-model-name") == "tiny"
    assert overhead.arg_value(argv, "--api-key") is None
    assert overhead.served_model_path(argv) == "/srv/m"
    assert overhead.served_model_path(["/v/vllm", "serve", "--model", "/x"]) == "/x"
    assert overhead.local_host(argv) == "127.0.0.1"
    assert overhead.local_host([*argv, "--host", "10.0.0.5"]) == "10.0.0.5"


# ------------------------------------------------------------------------ report: table and chart
def test_markdown_table_holds_the_figures_the_targets_and_the_date() -> None:
    doc = full_doc()
    overhead.summarize(doc)
    table = overhead.markdown_table(doc)
    lines = table.splitlines()
    assert lines[0] == "| Measured 2026-03-04 | Value | Target | Met |" and lines[1] == "|---|---|---|---|"
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 3 for line in lines[2:])
    assert "| first run / by hand | 2.31× | ≤ 1.25 | no |" in lines
    assert "| rerun / first run | 0.64× | ≤ 0.25 | no |" in lines
    assert "| rerun (changed=0) | 63.0 s | changed=0 | yes |" in lines
    assert "| tasks per node, first run / rerun | node1 170 / 160, node2 90 / 80 |  |  |" in lines
    assert "| 8 nodes / 2 nodes, first run | 2.17× | ≤ 1.3 | no |" in lines
    assert "| 8 nodes / 2 nodes, rerun | 2.75× | ≤ 1.3 | no |" in lines
    assert "| output tok/s, ours / by hand (3+3 runs × 200 requests) | 1.020 ± 0.059 | 1.00 ± 0.05 | yes |" in lines


def test_markdown_table_says_met_when_it_is() -> None:
    doc = {"date": "2026-05-01T00:00:00+00:00", "first_s": 50.0, "rerun_s": 10.0, "by_hand_s": 45.0}
    overhead.summarize(doc)
    table = overhead.markdown_table(doc)
    assert "| first run / by hand | 1.11× | ≤ 1.25 | yes |" in table
    assert "| rerun / first run | 0.20× | ≤ 0.25 | yes |" in table
    assert "nodes /" not in table and "tok/s" not in table


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_chart_is_a_png_with_a_panel_per_measure(tmp_path: Path) -> None:
    doc = full_doc()
    overhead.summarize(doc)
    both = overhead.write_chart(doc, tmp_path / "both.png").read_bytes()
    w2, h2 = png_size(both)
    assert len(both) > 10_000 and h2 > 300
    times = {k: v for k, v in doc.items() if k != "throughput"}
    w1, _ = png_size(overhead.write_chart(times, tmp_path / "times.png").read_bytes())
    assert w2 > w1 * 1.5  # the throughput panel is drawn beside the converge times
    with pytest.raises(ValueError, match="nothing to draw"):
        overhead.write_chart({"date": "x"}, tmp_path / "none.png")


def test_report_redraws_chart_and_table_of_a_results_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "overhead-20260304T050607Z.json"
    src.write_text(json.dumps(full_doc()))
    assert overhead.main(["--report", str(src)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.split("\n\n", 1)[0])
    assert summary["first_over_by_hand"] == 2.306 and summary["throughput_ratio"] == 1.0204
    assert "| Measured 2026-03-04 |" in out
    png_size((tmp_path / "overhead-20260304T050607Z.png").read_bytes())
    assert (tmp_path / "overhead-20260304T050607Z.md").read_text().startswith("| Measured 2026-03-04 |")
    saved = json.loads(src.read_text())
    assert saved["chart"].endswith(".png") and saved["scale"]["first_over_2"] == 2.17


def test_a_failed_run_stops_the_hand_processes_it_started(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(overhead, "sh", lambda *a, **k: "")
    monkeypatch.setattr(overhead, "wait_chat", lambda *a, **k: None)
    monkeypatch.setattr(overhead, "stop_units", lambda d: log.append("stop units"))
    monkeypatch.setattr(overhead, "start_units", lambda d, t: log.append("start units") or 20.0)
    monkeypatch.setattr(overhead, "start_by_hand", lambda d, t: log.append("start hand") or (15.0, "4242"))
    monkeypatch.setattr(overhead, "stop_by_hand", lambda d, pid: log.append(f"stop hand {pid}"))

    def bench(d: Any, s: Any, name: str, timeout: float) -> dict[str, Any]:
        if "hand1" in name:
            raise SystemExit("overhead: vllm bench serve exited 1")
        return overhead.bench_run_summary(bench_result(100.0))

    monkeypatch.setattr(overhead, "bench_once", bench)
    d = overhead.Deployment("node1", (), {"node1": {}}, (["/v/ray"], None), {}, (["/v/vllm"], None), Endpoint("x"))
    with pytest.raises(SystemExit, match="exited 1"):
        overhead.throughput(d, overhead.BenchSettings(200, 32, 16, 4), 3, 60, 600)
    assert log == ["stop units", "start units", "stop units", "start hand", "stop hand 4242"]


def test_hand_vllm_is_stopped_by_the_pid_the_node_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the shell of both commands, run here instead of over ssh: a process started the by-hand way
    # is found again through the pid file and stopped, even when the caller lost its pid
    monkeypatch.setattr(overhead, "PIDFILE", str(tmp_path / "vllm.pid"))
    ran: list[str] = []

    def local_sh(hv: Any, host: str, command: str, timeout: float = 120, **kw: Any) -> str:
        ran.append(command)
        return subprocess.run(
            ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=True
        ).stdout

    monkeypatch.setattr(overhead, "sh", local_sh)
    start = overhead.by_hand_command(["/bin/sleep", "60"], None, str(tmp_path / "v.log"))
    pid = int(local_sh({}, "n1", f"{start} | tee {overhead.PIDFILE}").strip())
    assert (tmp_path / "vllm.pid").read_text().strip() == str(pid)
    assert subprocess.run(["kill", "-0", str(pid)], check=False).returncode == 0
    d = overhead.Deployment("n1", ("n2",), {"n1": {}, "n2": {}}, (["/bin/true"], None), {}, ([], None), Endpoint("x"))
    overhead.stop_by_hand(d, "")
    state = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + 10  # an orphan may stay a zombie until its reaper runs
    while state.exists() and state.read_text().split()[2] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not state.exists() or state.read_text().split()[2] == "Z"
    assert not (tmp_path / "vllm.pid").exists()
    assert ran[-1] == "/bin/true stop --force"  # Ray stopped on the worker too


def test_ray_gate_query_sources_the_head_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # with Ray token auth a client without the head's env is refused: the query must carry it
    ran: list[str] = []
    nodes = [{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"GPU": 1.0}}] * 2
    out = "MNV_RAY_NODES " + json.dumps(nodes)

    def fake_sh(hv: Any, host: str, command: str, **kw: Any) -> str:
        ran.append(command)
        return out

    monkeypatch.setattr(overhead, "sh", fake_sh)
    head_cmd = (["/v/bin/ray", "start", "--head", "--port=6379"], "/etc/multinode-vllm/ray-head.env")
    d = overhead.Deployment("node1", ("node2",), {"node1": {}, "node2": {}}, head_cmd, {}, ([], None), Endpoint("x"))
    overhead.wait_ray_nodes(d, 2, 5)
    assert ran and ran[0].startswith("set -a; . /etc/multinode-vllm/ray-head.env; set +a; timeout ")
    assert "/v/bin/python" in ran[0]


def test_ray_gate_timeout_says_what_the_query_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overhead, "sh", lambda *a, **k: "InvalidAuthToken: Authentication token is missing")
    monkeypatch.setattr(overhead.time, "sleep", lambda s: None)
    d = overhead.Deployment("node1", (), {"node1": {}}, (["/v/bin/ray"], None), {}, ([], None), Endpoint("x"))
    with pytest.raises(SystemExit, match=r"sees 0 of 1 nodes after 0 s \(last query: no node list"):
        overhead.wait_ray_nodes(d, 1, 0.2)


def test_repeat_alternates_rounds_and_reports_the_medians(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    firsts, reruns, hands = iter([50.0, 70.0, 48.0]), iter([18.0, 25.0, 17.0]), iter([31.0, 42.0, 40.0])

    def fake_converge(inventory: str, extra_vars: Any = None) -> dict[str, Any]:
        order.append("converge")
        return {"first_s": next(firsts), "rerun_s": next(reruns), "first_changed": 3, "rerun_changed": 0}

    def fake_by_hand(inventory: str, timeout: float = 600) -> float:
        order.append("hand")
        return next(hands)

    monkeypatch.setattr(overhead, "converge", fake_converge)
    monkeypatch.setattr(overhead, "by_hand", fake_by_hand)
    monkeypatch.setattr(overhead, "timed_run", lambda *a, **k: (1.0, {}))
    doc: dict[str, Any] = {}
    overhead.measure(overhead.parse_args(["--repeat", "3"]), doc)
    assert order == ["converge", "hand"] * 3
    assert (doc["first_s"], doc["rerun_s"], doc["by_hand_s"]) == (50.0, 18.0, 40.0)
    assert [r["first_s"] for r in doc["rounds"]] == [50.0, 70.0, 48.0] and doc["rerun_changed"] == 0
    overhead.summarize(doc)
    assert doc["first_over_by_hand"] == 1.25 and doc["rerun_over_first"] == 0.36
