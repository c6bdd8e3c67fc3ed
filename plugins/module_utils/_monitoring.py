# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitoring role's rules: Prometheus's scrape configuration for the cluster, and its targets read back.

``prometheus_config`` builds the configuration (a dict the role writes as YAML): vLLM's /metrics on
the head (every engine's series carry an ``engine`` label there, data parallel included), Ray's
metrics export port and node_exporter on every node, each target labelled with its inventory host.
``targets_check`` reads Prometheus's ``/api/v1/targets`` answer: which expected jobs have a target
that is not up, and why (Prometheus's own ``lastError``).
"""

from __future__ import annotations

import re
from typing import Any

#: Prometheus durations as the configuration takes them (one unit: 15s, 1m, 500ms).
_DURATION = re.compile(r"^[1-9][0-9]*(ms|s|m|h|d|w|y)$")
#: Recorded series the role's rules file defines (files/multinode-vllm.rules.yml); the dashboard and
#: the gate use these names.
RECORDED = (
    "multinode_vllm:requests_running",
    "multinode_vllm:requests_waiting",
    "multinode_vllm:kv_cache_usage",
    "multinode_vllm:prefix_cache_hit_rate:rate5m",
    "multinode_vllm:generation_tokens_per_second:rate1m",
    "multinode_vllm:requests_finished_per_second:rate1m",
    "multinode_vllm:ray_nodes_up",
    "multinode_vllm:nodes_up",
    "multinode_vllm:ray_object_store_bytes",
)


class MonitoringError(ValueError):
    """A bad input, with the variable and the fix in the message."""


def _port(value: Any, variable: str) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit() or not 1 <= int(str(value).strip()) <= 65535:
        raise MonitoringError(f"{variable} must be a port number from 1 to 65535, got {value!r}")
    return int(str(value).strip())


def _duration(value: Any, variable: str) -> str:
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise MonitoringError(
            f"{variable} must be a Prometheus duration such as 15s, 1m or 500ms, got {value!r}: fix it in the inventory"
        )
    return value.strip()


def _nodes(nodes: Any) -> list[dict[str, str]]:
    """Inventory host -> control IP (a dict, in cluster order) as [{name, ip}]."""
    if not isinstance(nodes, dict) or not nodes:
        raise MonitoringError("no cluster nodes to scrape: the vllm_cluster group is empty")
    out = []
    for name, ip in nodes.items():
        if not name or not ip or not isinstance(ip, str):
            raise MonitoringError(
                f"node {name!r} has no control IP: run the preflight phase first (fabric_facts), "
                "or the monitoring play with its facts step"
            )
        out.append({"name": str(name), "ip": ip})
    return out


def listen_address(ip: Any, port: Any, variable: str) -> str:
    """ip:port for a --web.listen-address (IPv6 in brackets)."""
    if not isinstance(ip, str) or not ip:
        raise MonitoringError(f"no control IP for {variable}: run the preflight phase first (fabric_facts)")
    return _target(ip, _port(port, variable))


def _target(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def prometheus_config(
    nodes: Any,
    head: str,
    backend: str = "ray",
    vllm_port: Any = 8000,
    ray_metrics_port: Any = 8090,
    node_exporter_port: Any = 9100,
    scrape_interval: Any = "15s",
    evaluation_interval: Any = "15s",
    rule_files: Any = None,
    node_exporter: bool = True,
) -> dict[str, Any]:
    """Prometheus's configuration for the cluster: jobs vllm (the head), ray (ray backend) and node.

    ``nodes``: inventory host -> control IP, in cluster order.
    """
    hosts = _nodes(nodes)
    by_name = {n["name"]: n for n in hosts}
    if head not in by_name:
        raise MonitoringError(f"the head {head!r} is not among the cluster nodes {sorted(by_name)}")
    if backend not in ("ray", "mp"):
        raise MonitoringError(f"multinode_backend must be ray or mp, got {backend!r}")
    ports = {
        "multinode_vllm_port": _port(vllm_port, "multinode_vllm_port"),
        "multinode_ray_metrics_port": _port(ray_metrics_port, "multinode_ray_metrics_port"),
        "multinode_node_exporter_port": _port(node_exporter_port, "multinode_node_exporter_port"),
    }

    def job(name: str, port: int, members: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "job_name": name,
            "static_configs": [{"targets": [_target(n["ip"], port)], "labels": {"node": n["name"]}} for n in members],
        }

    # vLLM's API server runs on the head only (the other nodes' engines are headless or Ray
    # workers); its /metrics carries every engine's series. /metrics needs no API key.
    jobs = [job("vllm", ports["multinode_vllm_port"], [by_name[head]])]
    if backend == "ray":
        jobs.append(job("ray", ports["multinode_ray_metrics_port"], hosts))
    if node_exporter:
        jobs.append(job("node", ports["multinode_node_exporter_port"], hosts))
    return {
        "global": {
            "scrape_interval": _duration(scrape_interval, "monitoring_scrape_interval"),
            "evaluation_interval": _duration(evaluation_interval, "monitoring_evaluation_interval"),
        },
        "rule_files": list(rule_files or []),
        "scrape_configs": jobs,
    }


def expected_jobs(config: dict[str, Any]) -> dict[str, int]:
    """Job name -> number of targets, from a configuration built by prometheus_config."""
    return {
        j["job_name"]: sum(len(s["targets"]) for s in j.get("static_configs", []))
        for j in config.get("scrape_configs", [])
    }


def targets_check(answer: Any, expected: dict[str, int]) -> dict[str, Any]:
    """Prometheus's /api/v1/targets against the expected jobs: {up, down, missing, problem}."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        return {"up": 0, "down": [], "missing": sorted(expected), "problem": f"Prometheus answered {answer!r:.200}"}
    active = (answer.get("data") or {}).get("activeTargets") or []
    seen: dict[str, int] = {}
    up = 0
    down = []
    for t in active:
        labels = t.get("labels") or {}
        job = labels.get("job", t.get("scrapePool", "?"))
        seen[job] = seen.get(job, 0) + 1
        if t.get("health") == "up":
            up += 1
        else:
            down.append(
                f"{job} {labels.get('node', '')} {t.get('scrapeUrl', labels.get('instance', '?'))}: "
                f"{t.get('health', '?')}{' (' + t['lastError'] + ')' if t.get('lastError') else ''}"
            )
    missing = [
        f"{job} ({seen.get(job, 0)} of {n} targets)" for job, n in sorted(expected.items()) if seen.get(job, 0) < n
    ]
    problems = []
    if missing:
        problems.append("jobs without all their targets: " + ", ".join(missing))
    if down:
        problems.append("targets not up: " + "; ".join(down))
    return {"up": up, "down": down, "missing": missing, "problem": "; ".join(problems)}
