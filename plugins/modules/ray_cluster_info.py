#!/usr/bin/python
# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ray_cluster_info
short_description: What a Ray cluster sees (nodes, addresses, GPUs), with a bounded wait
version_added: "0.1.0"
description:
  - Runs C(ray.nodes()) through the Ray of the node (the venv python of the native runtime, or
    C(docker exec) into the Ray container) and reports the alive nodes, their addresses and GPUs.
  - "With O(expected_nodes) and O(expected_gpus) it polls until Ray sees all of them or
    O(wait_timeout) passes, then fails with what is missing (for example
    C(Ray sees 1 of 2 nodes: 10.0.0.12 missing)) unless O(fail_on_missing=false)."
  - While it waits, one Ray client connects once and asks again every half second (a GCS request);
    a query that fails (the GCS not up yet) is started again after O(poll_interval).
  - Read-only; runs in check mode.
options:
  address:
    description: GCS address of the cluster, C(HEAD_IP:PORT).
    type: str
    required: true
  python_cmd:
    description:
      - Argv prefix that runs a python with Ray on this node, for example
        C([/opt/multinode-vllm/venv/bin/python]) or C([docker, exec, ray-head, python3]).
    type: list
    elements: str
    default: [python3]
  expected_nodes:
    description: Node addresses (as given to C(--node-ip-address)) that must be alive.
    type: list
    elements: str
    default: []
  expected_gpus:
    description: GPUs the cluster must have in total; unset means no GPU check.
    type: float
  wait_timeout:
    description: Seconds to keep polling until the expectation holds; 0 queries once.
    type: int
    default: 0
  poll_interval:
    description: Seconds before a failed query is started again (a watching query asks every half second).
    type: int
    default: 3
  query_timeout:
    description: Seconds one query may take (a dead GCS makes C(ray.init) retry for long).
    type: int
    default: 45
  fail_on_missing:
    description: Fail when the expectation does not hold at the end; false only reports.
    type: bool
    default: true
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Wait until Ray sees both nodes and their GPUs
  multinode.vllm.ray_cluster_info:
    address: "10.0.0.11:6379"
    python_cmd: [/opt/multinode-vllm/venv/bin/python]
    expected_nodes: [10.0.0.11, 10.0.0.12]
    expected_gpus: 16
    wait_timeout: 120

- name: Probe without failing
  multinode.vllm.ray_cluster_info:
    address: "10.0.0.11:6379"
    python_cmd: [docker, exec, ray-head, python3]
    expected_nodes: [10.0.0.11, 10.0.0.12]
    fail_on_missing: false
  register: ray_probe
"""

RETURN = r"""
ok:
  description: Whether Ray sees every expected node and GPU (false also when the query failed).
  returned: always
  type: bool
reachable:
  description: Whether the last query returned a node list.
  returned: always
  type: bool
alive_nodes:
  description: Alive nodes, the head first.
  returned: always
  type: list
  elements: dict
  sample:
    - {"node_id": "5d49…", "ip": "10.0.0.11", "hostname": "node1", "is_head": true, "gpus": 8.0, "cpus": 96.0,
       "object_store_bytes": 2147483648}
node_ips:
  description: Addresses of the alive nodes.
  returned: always
  type: list
  elements: str
alive_count:
  description: Number of alive nodes.
  returned: always
  type: int
dead_count:
  description: Dead node entries Ray still lists (restarted raylets leave one).
  returned: always
  type: int
gpus:
  description: GPUs of the alive nodes in total.
  returned: always
  type: float
object_store_bytes:
  description: Ray's object store capacity on the alive nodes in total (bytes).
  returned: always
  type: int
object_store_used_bytes:
  description: Bytes of the object store in use (capacity less available); null when not known.
  returned: always
  type: int
missing:
  description: Expected addresses that are not alive.
  returned: always
  type: list
  elements: str
unexpected:
  description: Alive addresses that were not expected.
  returned: always
  type: list
  elements: str
polls:
  description: Queries made.
  returned: always
  type: int
msg:
  description: One sentence on what Ray sees or what is missing.
  returned: always
  type: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.multinode.vllm.plugins.module_utils._ray import build_query_argv, query_once, verdict


def run_command(module):
    return lambda argv: module.run_command(argv, check_rc=False)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            address=dict(type="str", required=True),
            python_cmd=dict(type="list", elements="str", default=["python3"]),
            expected_nodes=dict(type="list", elements="str", default=[]),
            expected_gpus=dict(type="float"),
            wait_timeout=dict(type="int", default=0),
            poll_interval=dict(type="int", default=3),
            query_timeout=dict(type="int", default=45),
            fail_on_missing=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        build_query_argv(p["python_cmd"], p["address"], p["query_timeout"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))

    # One process watches until Ray sees what is expected (or the wait ends); a query that fails
    # (the GCS not up yet, a killed query) is started again while time is left.
    deadline = time.monotonic() + max(p["wait_timeout"], 0)
    polls = 0
    while True:
        polls += 1
        left = deadline - time.monotonic()
        watch = (p["expected_nodes"], p["expected_gpus"], left) if left > 1 else None
        argv = build_query_argv(p["python_cmd"], p["address"], p["query_timeout"], watch)
        summary, error = query_once(run_command(module), argv)
        result = verdict(summary, error, p["address"], p["expected_nodes"], p["expected_gpus"])
        if result["ok"] or time.monotonic() + p["poll_interval"] > deadline:
            break
        time.sleep(max(p["poll_interval"], 1))

    result.update(changed=False, polls=polls)
    if not result["ok"] and p["fail_on_missing"]:
        if p["wait_timeout"] > 0:
            result["msg"] = "%s after %ss" % (result["msg"], p["wait_timeout"])
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
