# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The monitoring role's Prometheus configuration and its targets check, as Jinja2 filters."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: prometheus_config
short_description: Prometheus's scrape configuration for the cluster
description:
  - Takes the cluster nodes (inventory host -> control IP) and returns Prometheus's
    configuration as data; job C(vllm) scrapes vLLM's /metrics on the head (every engine's series,
    labelled C(engine)), C(ray) every node's Ray metrics export port (ray backend), C(node) every
    node's node_exporter. Each target carries a C(node) label with its inventory host.
  - Fails naming the variable and the fix on a bad port, duration or a node without a control IP.
  - The same plugin file also provides C(prometheus_targets) (Prometheus's /api/v1/targets answer
    checked against the configuration, which jobs lack targets, which targets are not up and why)
    and C(monitoring_listen) (an IP and a port as C(--web.listen-address) takes them, IPv6 in brackets).
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: The nodes, inventory host -> control IP, in cluster order.
    type: dict
    required: true
  head:
    description: The head's inventory host (runs vLLM's API server).
    type: str
    required: true
  backend:
    description: C(ray) or C(mp) (C(mp) has no Ray metrics).
    type: str
    default: ray
  vllm_port:
    description: vLLM's port (C(multinode_vllm_port)).
    type: int
    default: 8000
  ray_metrics_port:
    description: Ray's metrics export port (C(multinode_ray_metrics_port)).
    type: int
    default: 8090
  node_exporter_port:
    description: node_exporter's port (C(multinode_node_exporter_port)).
    type: int
    default: 9100
  scrape_interval:
    description: C(monitoring_scrape_interval).
    type: str
    default: 15s
  evaluation_interval:
    description: C(monitoring_evaluation_interval).
    type: str
    default: 15s
  rule_files:
    description: Paths of the rules files on the Prometheus host.
    type: list
    elements: str
    default: []
  node_exporter:
    description: Scrape node_exporter (C(monitoring_node_exporter)).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Show the scrape configuration
  ansible.builtin.debug:
    msg: "{{ {'node1': '10.0.0.1', 'node2': '10.0.0.2'} | multinode.vllm.prometheus_config('node1') | to_nice_yaml }}"
"""

RETURN = r"""
_value:
  description: Prometheus's configuration (global, rule_files, scrape_configs).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._monitoring import (
    MonitoringError,
    expected_jobs,
    listen_address,
    targets_check,
)
from ansible_collections.multinode.vllm.plugins.module_utils._monitoring import (
    prometheus_config as _prometheus_config,
)


def prometheus_config(
    nodes,
    head,
    backend="ray",
    vllm_port=8000,
    ray_metrics_port=8090,
    node_exporter_port=9100,
    scrape_interval="15s",
    evaluation_interval="15s",
    rule_files=None,
    node_exporter=True,
):
    try:
        return _prometheus_config(
            nodes,
            head,
            backend,
            vllm_port,
            ray_metrics_port,
            node_exporter_port,
            scrape_interval,
            evaluation_interval,
            rule_files,
            bool(node_exporter),
        )
    except MonitoringError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def monitoring_listen(ip, port, variable="the port"):
    try:
        return listen_address(ip, port, variable)
    except MonitoringError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def prometheus_targets(answer, config):
    if not isinstance(config, dict):
        raise AnsibleFilterError("prometheus_targets: give the configuration built by prometheus_config")
    return targets_check(answer, expected_jobs(config))


class FilterModule:
    def filters(self):
        return {
            "prometheus_config": prometheus_config,
            "prometheus_targets": prometheus_targets,
            "monitoring_listen": monitoring_listen,
        }
