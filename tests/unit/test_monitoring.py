"""The monitoring role's rules: the scrape configuration, the targets check, the rules and the dashboard.

The pure functions of plugins/module_utils/_monitoring.py directly; the role's files (recording
rules, Grafana dashboard) read as their consumers read them; the role's scrape configuration and
listen addresses rendered by Ansible from the role's own vars. Prometheus itself (promtool, the
scrapes) runs in the e2e test on the test bed (tests/e2e/test_serve_testbed.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.multinode.vllm.plugins.module_utils._monitoring import (
    RECORDED,
    MonitoringError,
    expected_jobs,
    listen_address,
    prometheus_config,
    targets_check,
)
from ansible_run import FAKE_FACTS_MODULE, ansible_playbook, local_cluster_inventory, role_vars_files

from multinode_vllm import PROJECT_DIR

ROLE = Path(PROJECT_DIR) / "roles" / "monitoring"
NODES = {"node1": "10.0.0.1", "node2": "10.0.0.2"}


def test_ray_cluster_scrapes_vllm_on_the_head_ray_and_node_exporter_everywhere() -> None:
    cfg = prometheus_config(NODES, "node1", rule_files=["/etc/prometheus/r.yml"], scrape_interval="5s")
    assert cfg["global"] == {"scrape_interval": "5s", "evaluation_interval": "15s"}
    assert cfg["rule_files"] == ["/etc/prometheus/r.yml"]
    jobs = {j["job_name"]: j["static_configs"] for j in cfg["scrape_configs"]}
    assert list(jobs) == ["vllm", "ray", "node"]
    assert jobs["vllm"] == [{"targets": ["10.0.0.1:8000"], "labels": {"node": "node1"}}]
    assert jobs["ray"] == [
        {"targets": ["10.0.0.1:8090"], "labels": {"node": "node1"}},
        {"targets": ["10.0.0.2:8090"], "labels": {"node": "node2"}},
    ]
    assert [s["targets"] for s in jobs["node"]] == [["10.0.0.1:9100"], ["10.0.0.2:9100"]]
    assert expected_jobs(cfg) == {"vllm": 1, "ray": 2, "node": 2}


def test_mp_backend_has_no_ray_job_and_ipv6_is_bracketed() -> None:
    cfg = prometheus_config({"a": "fd00::1", "b": "fd00::2"}, "b", backend="mp", vllm_port="8001", node_exporter=False)
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["vllm"]
    assert cfg["scrape_configs"][0]["static_configs"][0]["targets"] == ["[fd00::2]:8001"]
    assert listen_address("fd00::1", 9100, "multinode_node_exporter_port") == "[fd00::1]:9100"
    assert listen_address("10.0.0.1", "9090", "multinode_prometheus_port") == "10.0.0.1:9090"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vllm_port": 70000}, "multinode_vllm_port must be a port number from 1 to 65535, got 70000"),
        ({"ray_metrics_port": True}, "multinode_ray_metrics_port must be a port number"),
        ({"node_exporter_port": "x"}, "multinode_node_exporter_port must be a port number"),
        ({"scrape_interval": "15"}, "monitoring_scrape_interval must be a Prometheus duration such as 15s"),
        ({"evaluation_interval": "1 m"}, "monitoring_evaluation_interval must be a Prometheus duration"),
        ({"backend": "slurm"}, "multinode_backend must be ray or mp"),
        ({"head": "node9"}, "the head 'node9' is not among the cluster nodes ['node1', 'node2']"),
        ({"nodes": {"node1": "10.0.0.1", "node2": ""}}, "node 'node2' has no control IP: run the preflight phase"),
        ({"nodes": {}}, "the vllm_cluster group is empty"),
    ],
)
def test_bad_input_names_the_variable(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"nodes": NODES, "head": "node1"} | kwargs
    with pytest.raises(MonitoringError) as err:
        prometheus_config(**args)
    assert message in str(err.value)


def target(job: str, node: str, health: str = "up", error: str = "") -> dict[str, Any]:
    return {
        "labels": {"job": job, "node": node, "instance": f"{node}:1"},
        "scrapeUrl": f"http://{node}:1/metrics",
        "health": health,
        "lastError": error,
    }


def test_targets_all_up_passes_and_a_down_or_missing_one_is_named() -> None:
    cfg = prometheus_config(NODES, "node1")
    up = [target("vllm", "node1"), target("ray", "node1"), target("ray", "node2"), target("node", "node1")]
    answer = {"status": "success", "data": {"activeTargets": [*up, target("node", "node2")]}}
    assert targets_check(answer, expected_jobs(cfg)) == {"up": 5, "down": [], "missing": [], "problem": ""}
    down = {
        "status": "success",
        "data": {"activeTargets": [*up, target("node", "node2", "down", "connection refused")]},
    }
    got = targets_check(down, expected_jobs(cfg))
    assert got["up"] == 4
    assert got["problem"] == "targets not up: node node2 http://node2:1/metrics: down (connection refused)"
    missing = {"status": "success", "data": {"activeTargets": up}}
    assert (
        targets_check(missing, expected_jobs(cfg))["problem"] == "jobs without all their targets: node (1 of 2 targets)"
    )
    assert "Prometheus answered" in targets_check({"status": "error"}, expected_jobs(cfg))["problem"]


def test_rules_record_every_figure_once_from_real_metric_names() -> None:
    doc = yaml.safe_load((ROLE / "files" / "multinode-vllm.rules.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert [r["record"] for r in rules] == list(RECORDED)
    # the vLLM series the rules read are the ones status reads (plugins/module_utils/_metrics.py)
    from ansible_collections.multinode.vllm.plugins.module_utils._metrics import FIELDS

    for r in rules:
        for name in re.findall(r"\bvllm:[a-z_]+", r["expr"]):
            assert name in FIELDS or name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"), name
        assert r["expr"].count("(") == r["expr"].count(")"), r["expr"]


def test_dashboard_plots_every_recorded_series_and_nothing_else() -> None:
    dash = json.loads((ROLE / "files" / "grafana" / "multinode-vllm.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert sorted(exprs) == sorted(RECORDED)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {"${datasource}"}


PLAYBOOK = """\
- name: Render
  hosts: all
  gather_facts: false
  vars_files:
{vars_files}
  tasks:
    - name: Set the preflight facts
      fake_facts:
        facts: "{{{{ node_facts }}}}"
    - name: Render the templates
      ansible.builtin.template:
        src: "{root}/roles/monitoring/templates/{{{{ item }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}-{{{{ item | regex_replace('.j2$', '') }}}}"
        mode: "0600"
      loop: [prometheus.yml.j2, prometheus.default.j2, prometheus-node-exporter.default.j2]
"""


def render(tmp_path: Path, **extra: Any) -> Any:
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    out = tmp_path / "out"
    out.mkdir()

    def host(ip: str) -> dict[str, Any]:
        return {"node_facts": {"multinode_fabric": {"control_ip": ip}}}

    inv = local_cluster_inventory({"node1": host("10.0.0.1")}, {"node2": host("10.0.0.2")})
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "pb.yml").write_text(
        PLAYBOOK.format(root=PROJECT_DIR, out=out, vars_files=role_vars_files("multinode", "monitoring"))
    )
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    proc = ansible_playbook(
        "-i",
        str(tmp_path / "hosts.yml"),
        str(tmp_path / "pb.yml"),
        "-e",
        f"@{tmp_path / 'extra.json'}",
        timeout=120,
        ANSIBLE_LIBRARY=str(lib),
    )
    return proc, out


def test_role_renders_the_configuration_and_listen_addresses(tmp_path: Path) -> None:
    proc, out = render(tmp_path, monitoring_scrape_interval="5s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    cfg = yaml.safe_load((out / "node1-prometheus.yml").read_text())
    assert cfg == prometheus_config(
        NODES, "node1", scrape_interval="5s", rule_files=["/etc/prometheus/multinode-vllm.rules.yml"]
    )
    assert (out / "node2-prometheus.yml").read_text() == (out / "node1-prometheus.yml").read_text()
    assert (
        'ARGS="--web.listen-address=10.0.0.1:9090 --storage.tsdb.retention.time=15d'
        ' --storage.tsdb.path=/var/lib/prometheus/multinode-vllm"' in (out / "node2-prometheus.default").read_text()
    )  # the server's address, from any host
    assert 'ARGS="--web.listen-address=10.0.0.2:9100"' in (out / "node2-prometheus-node-exporter.default").read_text()


def test_role_stops_on_a_bad_interval_naming_it(tmp_path: Path) -> None:
    proc, _out = render(tmp_path, monitoring_scrape_interval="often")
    assert proc.returncode != 0
    assert "monitoring_scrape_interval must be a Prometheus duration such as 15s" in " ".join(proc.stdout.split())


EXPORT_PLAYBOOK = """\
- name: Export
  hosts: all
  gather_facts: false
  vars_files:
{vars_files}
  tasks:
    - name: Set the preflight facts
      fake_facts:
        facts: "{{{{ node_facts }}}}"
    - name: Write what an existing Prometheus needs
      ansible.builtin.include_role:
        name: multinode.vllm.monitoring
        tasks_from: export.yml
      vars:
        monitoring_export_dir: "{out}/{{{{ inventory_hostname }}}}"
        monitoring_config: "{{{{ _monitoring_config }}}}"  # main.yml's "Build the scrape configuration"
      run_once: true
"""


@pytest.mark.parametrize("install", [False, True])
def test_an_existing_prometheus_gets_the_scrape_configuration_and_rules(tmp_path: Path, install: bool) -> None:
    """monitoring_prometheus_install: false writes the scrape configuration and the rules next to the
    inventory for a Prometheus elsewhere (and says so); true writes only the dashboard there."""
    lib = tmp_path / "library"
    lib.mkdir()
    (lib / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    out = tmp_path / "out"
    inv = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "monitoring_prometheus_install": install,
            },
            "children": {
                "vllm_cluster": {
                    "children": {
                        "ray_head": {
                            "hosts": {"node1": {"node_facts": {"multinode_fabric": {"control_ip": "10.0.0.1"}}}}
                        },
                        "ray_workers": {
                            "hosts": {"node2": {"node_facts": {"multinode_fabric": {"control_ip": "10.0.0.2"}}}}
                        },
                    }
                }
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    (tmp_path / "pb.yml").write_text(EXPORT_PLAYBOOK.format(out=out, vars_files=role_vars_files("multinode")))
    proc = ansible_playbook(
        "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "pb.yml"), timeout=120, ANSIBLE_LIBRARY=str(lib)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    written = out / "node1"
    assert (written / "grafana-multinode-vllm.json").read_bytes() == (
        Path(PROJECT_DIR) / "roles/monitoring/files/grafana/multinode-vllm.json"
    ).read_bytes()
    said = " ".join(proc.stdout.split())
    if install:
        assert sorted(p.name for p in written.iterdir()) == ["grafana-multinode-vllm.json"]
        assert "Prometheus is not installed here" not in said
        return
    assert (written / "multinode-vllm.rules.yml").read_bytes() == (
        Path(PROJECT_DIR) / "roles/monitoring/files/multinode-vllm.rules.yml"
    ).read_bytes()
    scrape = yaml.safe_load((written / "prometheus-scrape.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert set(jobs) == {"vllm", "ray", "node"}, jobs
    targets = [t for sc in jobs["node"]["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == ["10.0.0.1:9100", "10.0.0.2:9100"], jobs["node"]
    assert "Prometheus is not installed here (monitoring_prometheus_install: false)" in said
