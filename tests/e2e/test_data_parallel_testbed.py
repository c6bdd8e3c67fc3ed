"""Data parallel 2 on the ray backend, on the local test bed (mnv, left serving by the CLI tests).

site.yml with vllm_serve_data_parallel_size=2, TP 1 x PP 1: `vllm serve` on the head only, with
`--data-parallel-backend ray --data-parallel-size 2 --data-parallel-size-local 1`; vLLM places the
second engine as a Ray actor on the other node. The serve gate checks every engine's
finished-request counter; 20 chat completions sent at once move both engines' counters (read with
prometheus_client's parser), and `multinode-vllm status --json` shows them per engine; a rerun
changes nothing. The mp backend's data parallel runs in
test_mp_backend_testbed.py. At the end the bed's nodes are stopped (`multinode-vllm up` starts them
again): idle engines would take CPU from the modules after this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e_beds import RECAP, cli_status, default_bed_serving
from engine_load import CHAT_BODY, every_engine_serves

from multinode_vllm import PROJECT_DIR
from multinode_vllm import testbed as tb
from multinode_vllm.testbed.nodes import containers

pytestmark = pytest.mark.e2e

pytest.importorskip("multinode_vllm.testbed.nodeenv")

INVENTORY = str(PROJECT_DIR / "inventories" / "local")
TESTBED = "mnv"  # the CLI's default test bed (commands/up.py)
DP = {
    "multinode_backend": "ray",
    "vllm_serve_data_parallel_size": 2,
    "vllm_serve_tensor_parallel_size": 1,
    "vllm_serve_pipeline_parallel_size": 1,
}


@pytest.fixture(scope="module", autouse=True)
def stop_the_bed_after() -> Iterator[None]:
    """The last module on mnv: its nodes are stopped at the end (`podman stop`; `multinode-vllm up`
    starts them again), so that two idle engines and Ray do not take CPU from the modules after it."""
    yield
    if os.environ.get("MNV_E2E_KEEP"):
        return
    names = [c["Names"][0] for c in containers(TESTBED)]
    if names:
        subprocess.run(["podman", "stop", "-t", "10", *names], check=False, capture_output=True, timeout=120)


def endpoint() -> tuple[str, str]:
    """The head's base URL and the API key: of what serves now (test_bench, just before, leaves the
    default serving), else of what `multinode-vllm up` brings up."""
    serving = default_bed_serving()
    if serving is None:
        proc = subprocess.run(
            [sys.executable, "-m", "multinode_vllm", "up", "--json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "CI": "true"},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return serving_endpoint(serving)


def serving_endpoint(serving: tuple[str, str | None] | None = None) -> tuple[str, str]:
    """The head's base URL and the API key of what serves now (no `up`: it would converge the
    default); ``serving``: what default_bed_serving() just returned, when the caller has it."""
    serving = serving or default_bed_serving()
    assert serving is not None, "the local test bed does not serve: see the test before this one"
    url, key = serving
    assert key, "the local test bed serves with an API key"
    return url, key


def on_node(node: int, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A shell command on node1 or node2 of mnv, through podman exec (no Ansible start-up to pay)."""
    return tb.exec(TESTBED, node, ["sh", "-c", script], check=check)


def chat(url: str, key: str) -> str:
    body = CHAT_BODY
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(req, timeout=120) as resp:
        return str(json.loads(resp.read())["choices"][0]["message"]["content"])


def test_ray_backend_serves_data_parallel_2_across_two_nodes(run_ansible: Callable[..., Any]) -> None:
    url, key = endpoint()
    proc = run_ansible("ansible-playbook", "-i", INVENTORY, "site.yml", "-e", json.dumps(DP), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "every engine served" in proc.stdout, proc.stdout[-3000:]
    unit = on_node(1, "systemctl cat vllm")
    for flag in ('"--data-parallel-size" "2"', '"--data-parallel-size-local" "1"', '"--data-parallel-backend" "ray"'):
        assert flag in unit.stdout, unit.stdout[-3000:]
    assert "--headless" not in unit.stdout and "--nnodes" not in unit.stdout
    # the second engine is a Ray actor on the other node
    ps = on_node(2, "ps -eo args")
    assert "EngineCoreActor" in ps.stdout, ps.stdout[-3000:]

    after = every_engine_serves(url, lambda: chat(url, key), label="ray dp2")

    # status reads the same counters per engine (two /metrics reads; the JSON fields the README names)
    proc, st = cli_status({**os.environ, "CI": "true"}, timeout=600)
    assert proc.returncode == 0 and st, proc.stderr[-3000:]
    metrics = st["metrics"]
    print(f"[ray dp2] status metrics {json.dumps(metrics)}")
    assert set(metrics["engines"]) == {"0", "1"} and metrics["total"]["engines"] == 2
    for e in ("0", "1"):
        assert metrics["engines"][e]["finished_requests"] == after[e]
        assert {"running", "waiting", "kv_cache_usage", "prefix_cache_hit_rate", "generation_tokens_per_s"} <= set(
            metrics["engines"][e]
        )

    rerun = run_ansible("ansible-playbook", "-i", INVENTORY, "site.yml", "-e", json.dumps(DP), timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-6000:]
    changed = {m[0]: int(m[2]) for m in RECAP.findall(rerun.stdout)}
    assert set(changed.values()) == {0}, changed


def unit_start(node: int, unit: str) -> str:
    """The unit's start timestamp (monotonic, µs): changes exactly when it (re)starts."""
    return on_node(node, f"systemctl show -p ExecMainStartTimestampMonotonic --value {unit}").stdout.strip()


def test_tags_serve_with_data_parallel_restarts_vllm_only(run_ansible: Callable[..., Any]) -> None:
    """A serve setting changed and `--tags serve`: vLLM (both engines) restarts, Ray does not."""
    url, key = serving_endpoint()
    ray = {(n, u): unit_start(n, u) for n, u in ((1, "ray-head"), (2, "ray-worker"))}
    vllm = unit_start(1, "vllm")
    change = {**DP, "vllm_serve_max_num_seqs": 3}
    proc = run_ansible(
        "ansible-playbook", "-i", INVENTORY, "site.yml", "--tags", "serve", "-e", json.dumps(change), timeout=1200
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "every engine served" in proc.stdout, proc.stdout[-3000:]
    assert unit_start(1, "vllm") != vllm
    assert {k: unit_start(*k) for k in ray} == ray, "--tags serve restarted Ray"
    unit = on_node(1, "systemctl cat vllm")
    assert '"--max-num-seqs" "3"' in unit.stdout and '"--data-parallel-size" "2"' in unit.stdout
    every_engine_serves(url, lambda: chat(url, key), label="ray dp2 --tags serve")


def test_a_killed_engine_is_healed_by_one_rerun(run_ansible: Callable[..., Any]) -> None:
    """SIGKILL of the second engine (its Ray actor on node2): one rerun of site.yml serves on both again."""
    url, key = serving_endpoint()
    change = {**DP, "vllm_serve_max_num_seqs": 3}  # the settings the previous test left
    kill = on_node(
        2,
        "pids=$(ps -eo pid=,args= | awk '/EngineCoreActor/ && !/awk/ {print $1}'); "
        '[ -n "$pids" ] && kill -9 $pids && echo killed $pids',
        check=False,
    )
    assert kill.returncode == 0 and "killed" in kill.stdout, kill.stdout[-2000:]
    rerun = run_ansible("ansible-playbook", "-i", INVENTORY, "site.yml", "-e", json.dumps(change), timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-6000:] + rerun.stderr[-2000:]
    assert "every engine served" in rerun.stdout, rerun.stdout[-3000:]
    every_engine_serves(url, lambda: chat(url, key), label="ray dp2 after a killed engine")
    again = run_ansible("ansible-playbook", "-i", INVENTORY, "site.yml", "-e", json.dumps(change), timeout=1200)
    changed = {m[0]: int(m[2]) for m in RECAP.findall(again.stdout)}
    assert again.returncode == 0 and set(changed.values()) == {0}, changed


def test_prometheus_records_the_running_requests_of_every_engine(run_ansible: Callable[..., Any]) -> None:
    """The monitoring role on this DP 2 bed: every target up, and the running-requests rule (what
    `status` shows) has one series per engine, from the head's /metrics (engine 1 runs on node2)."""
    change = {
        **DP,
        "vllm_serve_max_num_seqs": 3,  # the settings the previous tests left
        "monitoring_scrape_interval": "2s",
        "monitoring_evaluation_interval": "2s",
    }
    proc = run_ansible(
        "ansible-playbook", "-i", INVENTORY, "playbooks/monitoring.yml", "-e", json.dumps(change), timeout=1200
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "targets (vllm, ray, node)" in " ".join(proc.stdout.split()), proc.stdout[-3000:]
    # Prometheus listens on the head's control address (a cluster member asks: the firewall keeps it to them)
    head = on_node(1, "ip -4 -o addr show bond0").stdout.split()[3].split("/")[0]

    def query(promql: str) -> list[dict[str, Any]]:
        url = f"http://{head}:9090/api/v1/query?query={urllib.parse.quote(promql)}"
        answer = json.loads(on_node(1, f"curl -sf --max-time 10 '{url}'").stdout)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    assert {r["value"][1] for r in query("up")} == {"1"}
    deadline, engines = time.monotonic() + 60, set()
    while time.monotonic() < deadline:
        engines = {r["metric"]["engine"] for r in query("multinode_vllm:requests_running")}
        if engines == {"0", "1"}:
            break
        time.sleep(2)
    print(f"[ray dp2] Prometheus: multinode_vllm:requests_running for engines {sorted(engines)}")
    assert engines == {"0", "1"}
