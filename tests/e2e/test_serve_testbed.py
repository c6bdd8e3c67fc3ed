"""Cluster and serve phases end to end on the simulated cluster (native runtime, ray backend).

One ordered story on the session test bed (2 nodes, bond0): the tiny Llama served with PP 2
across the two nodes over Ray, a chat completion answered from the
controller, `ray status`
showing both nodes, a second run with changed=0, `--tags serve` after a serve variable changed
restarting vLLM only, status.yml, the monitoring role (Prometheus on the head scraping vLLM, Ray
and node_exporter; recording rules; the firewall keeping it to members), a killed worker Ray
(restarted by systemd, so Ray looks whole while vLLM has lost its worker) brought back by one rerun, then teardown.
Each phase's wall time is printed (pytest -s) and collected in PHASE_SECONDS.

Needs: the node venv (/var/tmp/multinode-vllm/venvs/node, or MNV_NODE_VENV) and the tiny model
(multinode_vllm.testbed.tinymodel).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_beds import RECAP

from multinode_vllm import RunOptions
from multinode_vllm import run as runner_run

pytestmark = pytest.mark.e2e

API_KEY = "mnv-testbed-key"  # inventories/local/group_vars/all/serve.yml
PORT = 8000
CLUSTER_SERVE = ("playbooks/cluster.yml", "playbooks/serve.yml")
PHASE_SECONDS: dict[str, float] = {}
# A serve variable changed by the `--tags serve` step and kept for the later steps.
SERVE_CHANGE = {"vllm_serve_max_num_seqs": 3}


def node_venv() -> Path:
    return Path(os.environ.get("MNV_NODE_VENV", "/var/tmp/multinode-vllm/venvs/node"))


def recap(stdout: str) -> dict[str, dict[str, int]]:
    return {
        m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
        for m in RECAP.findall(stdout)
    }


class Story:
    """The shared state of the ordered steps (an earlier failure makes later steps fail fast)."""

    def __init__(self, testbed: Any, run_ansible: Callable[..., Any]) -> None:
        self.tb = testbed
        self._run = run_ansible
        self.failed = ""
        self.extra: dict[str, Any] = {}
        if "MNV_NODE_VENV" in os.environ:
            self.extra["multinode_venv"] = str(node_venv())

    @property
    def head_mgmt(self) -> str:
        return self.tb.node(1).mgmt_ip

    @property
    def head_fabric(self) -> str:
        return self.tb.node(1).ips["bond0"]

    def playbook_args(self, *playbooks: str, extra: dict[str, Any] | None = None) -> list[str]:
        """ansible-playbook's arguments: the test bed's inventory, the playbooks, the story's extra vars (and these)."""
        return ["-i", str(self.tb.inventory), *playbooks, "-e", json.dumps({**self.extra, **(extra or {})})]

    def playbook(
        self, *playbooks: str, phase: str, extra: dict[str, Any] | None = None, args: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        if self.failed:
            pytest.fail(f"an earlier step failed: {self.failed}")
        t0 = time.monotonic()
        proc = self._run("ansible-playbook", *self.playbook_args(*playbooks, extra=extra), *args, timeout=900)
        PHASE_SECONDS[phase] = round(time.monotonic() - t0, 1)
        print(f"\n[phase] {phase}: {PHASE_SECONDS[phase]} s")
        if proc.returncode != 0:
            self.failed = phase
            pytest.fail(f"{phase}: rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
        return proc

    def node_sh(self, index: int, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.tb.exec(index, ["sh", "-c", script], check=check)

    def unit_start(self, index: int, unit: str) -> str:
        """The unit's start timestamp (monotonic, µs): changes exactly when it (re)starts."""
        return self.node_sh(index, f"systemctl show -p ExecMainStartTimestampMonotonic --value {unit}").stdout.strip()

    def chat(self, content: str = "Say hello.") -> dict[str, Any]:
        body = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 12,
            "min_tokens": 1,
            "temperature": 0,
        }
        req = urllib.request.Request(
            f"http://{self.head_mgmt}:{PORT}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.head_mgmt}:{PORT}/health", timeout=5) as resp:
                return int(resp.status)
        except (urllib.error.URLError, OSError):
            return -1

    @property
    def ray_cli(self) -> str:
        # Ray token auth (multinode_ray_auth_mode=token): a client needs the mode and the token file
        auth = "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/etc/multinode-vllm/ray-auth-token"
        return f"{auth} {self.extra.get('multinode_venv', str(node_venv()))}/bin/ray"

    def ray_status(self) -> str:
        return self.node_sh(1, f"{self.ray_cli} status --address {self.head_fabric}:6379").stdout


@pytest.fixture(scope="module")
def story(testbed: Any, run_ansible: Callable[..., Any]) -> Story:
    if not (node_venv() / "bin" / "vllm").exists():
        pytest.fail(f"node venv {node_venv()} missing: build it (multinode-vllm testbed) or set MNV_NODE_VENV")
    model = Path(testbed.shared_dir) / "models" / "tiny-llama"
    if not (model / "config.json").exists():
        from multinode_vllm.testbed.tinymodel import make_tiny_llama

        t0 = time.monotonic()
        make_tiny_llama(model)
        PHASE_SECONDS["tiny model"] = round(time.monotonic() - t0, 1)
    return Story(testbed, run_ansible)


def test_cluster_and_serve_pp2_over_ray(story: Story) -> None:
    proc = story.playbook(*CLUSTER_SERVE, phase="cluster+serve (first run)")
    assert "Ray sees 2 nodes and 2 GPUs" in proc.stdout
    assert story.health() == 200
    answer = story.chat()
    text = answer["choices"][0]["message"]["content"]
    print(f"[answer] {text!r}")
    assert text, answer
    assert answer["usage"]["completion_tokens"] >= 1
    # the key is enforced: no key, no answer
    req = urllib.request.Request(f"http://{story.head_mgmt}:{PORT}/v1/models")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401


def test_ray_status_shows_both_nodes_and_pp_runs_on_both(story: Story) -> None:
    out = story.ray_status()
    print(out)
    active = out.split("Active:")[1].split("Pending:")[0]
    assert len(re.findall(r"^\s*1 node_[0-9a-f]+", active, re.M)) == 2, out
    assert re.search(r"/2\.0 GPU", out), out
    # PP 2: vLLM's Ray workers hold one GPU on each node
    assert re.search(r"\b2\.0/2\.0 GPU", out), out
    # the API key is in the 0600 env file, never on a command line
    ps = story.node_sh(1, "ps -eo args").stdout
    assert API_KEY not in ps
    mode = story.node_sh(1, "stat -c %a /etc/multinode-vllm/vllm.env").stdout.strip()
    assert mode == "600"


def test_second_run_changes_nothing_and_restarts_nothing(story: Story) -> None:
    before = {(i, u): story.unit_start(i, u) for i, u in ((1, "ray-head"), (2, "ray-worker"), (1, "vllm"))}
    proc = story.playbook(*CLUSTER_SERVE, phase="cluster+serve (second run)")
    stats = recap(proc.stdout)
    assert set(stats) == {"node1", "node2"}
    assert all(s["changed"] == 0 for s in stats.values()), stats
    after = {k: story.unit_start(*k) for k in before}
    assert after == before


def test_tags_serve_after_a_serve_change_restarts_vllm_only(story: Story) -> None:
    before = {(i, u): story.unit_start(i, u) for i, u in ((1, "ray-head"), (2, "ray-worker"), (1, "vllm"))}
    story.extra.update(SERVE_CHANGE)
    proc = story.playbook(
        "playbooks/cluster.yml",
        "playbooks/serve.yml",
        phase="--tags serve (vLLM restart)",
        args=("--tags", "serve"),
    )
    stats = recap(proc.stdout)
    assert stats["node1"]["changed"] >= 1 and stats["node2"]["changed"] == 0, stats
    assert story.unit_start(1, "ray-head") == before[(1, "ray-head")]
    assert story.unit_start(2, "ray-worker") == before[(2, "ray-worker")]
    assert story.unit_start(1, "vllm") != before[(1, "vllm")]
    unit = story.node_sh(1, "systemctl cat vllm").stdout
    assert '"--max-num-seqs" "3"' in unit
    assert story.chat()["choices"][0]["message"]["content"]


def test_status_reports_a_healthy_group(story: Story) -> None:
    t0 = time.monotonic()
    result = runner_run(
        RunOptions(inventory=story.tb.inventory, playbook="playbooks/status.yml", extra_vars=dict(story.extra))
    )
    PHASE_SECONDS["status"] = round(time.monotonic() - t0, 1)
    status = result.exported["multinode_status"]
    print(json.dumps(status, indent=2))
    assert status["healthy"] is True
    assert status["nodes"]["node1"]["processes"] == {
        "ray-head": "active",
        "ray-worker": "inactive",
        "vllm": "active",
    }
    assert status["nodes"]["node2"]["processes"]["ray-worker"] == "active"
    assert status["ray"]["node_ips"] == sorted([story.head_fabric, story.tb.node(2).ips["bond0"]])
    # the object store of both nodes (multinode_ray_object_store_memory each), some of it in use
    # (inventories/local/group_vars/all/serve.yml: 256 MiB per node)
    store = int(story.extra.get("multinode_ray_object_store_memory", 268435456))
    assert abs(status["ray"]["object_store_bytes"] - 2 * store) <= 0.01 * store, status["ray"]
    assert 0 <= status["ray"]["object_store_used_bytes"] <= status["ray"]["object_store_bytes"], status["ray"]
    assert status["vllm"]["models"] == ["tiny-llama"]
    assert result.hosts["node1"].changed == 0


MONITORING = {"monitoring_scrape_interval": "2s", "monitoring_evaluation_interval": "2s"}


def prometheus_query(story: Story, query: str) -> list[dict[str, Any]]:
    """A PromQL query from the head (a cluster member: the firewall keeps Prometheus to members)."""
    url = f"http://{story.head_fabric}:9090/api/v1/query?query={urllib.parse.quote(query)}"
    out = story.node_sh(1, f"curl -sf --max-time 10 '{url}'").stdout
    answer = json.loads(out)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_monitoring_scrapes_every_engine_ray_and_node_exporter(story: Story) -> None:
    proc = story.playbook("playbooks/monitoring.yml", phase="monitoring", extra=MONITORING)
    assert re.search(r"Prometheus http://\S+:9090 scrapes 5\s+targets \(vllm, ray, node\)", proc.stdout), proc.stdout[
        -3000:
    ]
    # every `up` series is one of ours: none left from the example configuration Debian's package
    # starts Prometheus with at install (jobs prometheus and node on localhost, no node label)
    up = {
        (r["metric"]["job"], r["metric"].get("node", r["metric"].get("instance"))): r["value"][1]
        for r in prometheus_query(story, "up")
    }
    assert up == {(job, node): "1" for job in ("ray", "node") for node in ("node1", "node2")} | {("vllm", "node1"): "1"}
    # the recording rules: per engine from vLLM's /metrics, nodes from Ray and node_exporter
    story.chat()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        finished = prometheus_query(story, "multinode_vllm:requests_finished_per_second:rate1m > 0")
        if finished:
            break
        time.sleep(2)
    assert [r["metric"]["engine"] for r in finished] == ["0"], finished
    assert [r["metric"]["engine"] for r in prometheus_query(story, "multinode_vllm:kv_cache_usage")] == ["0"]
    # the running-requests figure of `status`, one series per engine (this bed serves one: PP 2, DP 1)
    running = prometheus_query(story, "multinode_vllm:requests_running")
    assert [r["metric"]["engine"] for r in running] == ["0"] and running[0]["value"][1] == "0", running
    assert prometheus_query(story, "multinode_vllm:ray_nodes_up")[0]["value"][1] == "2"
    assert prometheus_query(story, "multinode_vllm:nodes_up")[0]["value"][1] == "2"
    ray_series = prometheus_query(story, 'count({job="ray"})')
    print(f"[monitoring] Ray series scraped: {ray_series[0]['value'][1]}")
    # the loaded ruleset keeps the metrics ports to members (an outsider's probe of them is in
    # tests/e2e/test_secrets_testbed.py); a member (node2) reaches node1's node_exporter
    protected = story.node_sh(1, "nft list set inet multinode_vllm protected_ports").stdout
    assert all(re.search(rf"\b{p}\b", protected) for p in (8090, 9090, 9100)), protected
    assert (
        "node_cpu_seconds_total"
        in story.node_sh(2, f"curl -sf --max-time 5 http://{story.head_fabric}:9100/metrics").stdout
    )
    rerun = story.playbook("playbooks/monitoring.yml", phase="monitoring rerun", extra=MONITORING)
    assert all(v["changed"] == 0 for v in recap(rerun.stdout).values()), recap(rerun.stdout)


def test_killed_worker_ray_is_brought_back_by_one_rerun(story: Story) -> None:
    before = story.unit_start(2, "ray-worker")
    vllm_before = story.unit_start(1, "vllm")
    story.node_sh(2, "systemctl kill --signal=SIGKILL ray-worker")
    # systemd (Restart=always) brings the worker's Ray back and it rejoins: Ray looks whole and
    # /health keeps answering 200 while vLLM's RayWorkerProc on node2 is gone. That is the trap.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        restarted = story.unit_start(2, "ray-worker") not in ("", "0", before)
        out = story.node_sh(1, f"{story.ray_cli} status --address {story.head_fabric}:6379", check=False).stdout
        active = out.split("Active:")[-1].split("Pending:")[0]
        if restarted and len(re.findall(r"node_[0-9a-f]+", active)) == 2:
            break
        time.sleep(2)
    else:
        pytest.fail("node2's Ray was not restarted by systemd and rejoined within 120 s")
    print(f"[recovery] Ray whole again; /health says {story.health()} with a dead vLLM worker")
    proc = story.playbook(*CLUSTER_SERVE, phase="rerun after a killed worker")
    stats = recap(proc.stdout)
    print(f"[recovery] recap {stats}")
    # Either vLLM noticed the lost worker itself (EngineDeadError, then systemd's Restart=on-failure
    # after Ray was whole again) or the rerun found the worker's Ray started after vLLM and
    # restarted vLLM. Either way vLLM must now be younger than every Ray it depends on.
    by_rerun = "node2 ray-worker started after vLLM" in proc.stdout
    print(f"[recovery] vLLM restarted by {'the rerun' if by_rerun else 'systemd before the rerun'}")
    assert story.unit_start(1, "vllm") != vllm_before
    assert int(story.unit_start(1, "vllm")) > int(story.unit_start(2, "ray-worker"))
    if by_rerun:
        assert stats["node1"]["changed"] >= 1, stats
    assert story.health() == 200
    assert story.chat()["choices"][0]["message"]["content"]
    out = story.ray_status()
    active = out.split("Active:")[1].split("Pending:")[0]
    assert len(re.findall(r"^\s*1 node_[0-9a-f]+", active, re.M)) == 2, out


def test_teardown_stops_everything_and_keeps_the_model(story: Story) -> None:
    story.playbook("playbooks/teardown.yml", phase="teardown")
    for i, units in ((1, "ray-head vllm"), (2, "ray-worker")):
        out = story.node_sh(i, f"systemctl is-active {units}", check=False).stdout.split()
        assert all(s in ("inactive", "unknown") for s in out), out
    assert story.health() == -1
    assert (Path(story.tb.shared_dir) / "models" / "tiny-llama" / "config.json").exists()
    assert story.node_sh(1, "ls /etc/systemd/system/vllm.service", check=False).returncode != 0
    print(f"\n[phases] {json.dumps(PHASE_SECONDS)}")
    # teardown.yml leaves monitoring alone (it watches more than vLLM); here, Prometheus scraping at 2 s
    # and the exporters would take CPU from the modules after this one (test_faults reuses this bed)
    for i, units in ((1, "prometheus prometheus-node-exporter"), (2, "prometheus-node-exporter")):
        story.node_sh(i, f"systemctl stop {units}", check=False)
