#!/usr/bin/python
# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: unit_state
short_description: Read every managed unit or container of a node in one call, and say which must restart
version_added: "0.2.0"
description:
  - Reads the systemd units (native runtime; one C(systemctl show)) or the containers (docker
    runtime; one C(docker inspect)) named in O(units), and the modification times of their files.
  - Returns for each whether it exists and runs, when it last started, and whether a file changed
    after that start (a run stopped between writing a unit or environment file and the restart
    handler leaves the process on its old settings; the next run finds the files unchanged).
  - RV(restart) maps each unit that must restart to the reason. The rules are the pure functions of
    C(plugins/module_utils/_units.py).
  - Read-only; runs in check mode.
options:
  runtime:
    description: How the processes run on this node.
    type: str
    choices: [native, docker]
    required: true
  units:
    description: The units (native) or containers (docker) to read.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Unit name without C(.service), or container name.
        type: str
        required: true
      files:
        description: Files whose change after the start means the process runs on old settings.
        type: list
        elements: path
        default: []
  ray:
    description:
      - Also ask Ray which nodes are alive, as M(multinode.vllm.ray_cluster_info) does (one query,
        never failing), when the unit O(ray.when_active) runs; the answer is RV(ray). Runs beside
        the O(health_url) read (threads), so the head's whole probe is one round trip.
    type: dict
    suboptions:
      address:
        description: The GCS address of Ray.
        type: str
        required: true
      python_cmd:
        description: The python that has Ray.
        type: list
        elements: str
        default: [python3]
      expected_nodes:
        description: The node IPs Ray must see.
        type: list
        elements: str
        default: []
      expected_gpus:
        description: The GPUs Ray must see.
        type: float
      query_timeout:
        description: Seconds the query may take.
        type: int
        default: 30
      when_active:
        description: The unit that must run for the query.
        type: str
        default: ray-head
  health_url:
    description: Also GET this URL (vLLM's /health) when the unit O(health_when_active) runs; RV(health).
    type: str
  health_when_active:
    description: The unit that must run for the O(health_url) read.
    type: str
    default: vllm
  health_timeout:
    description: Seconds the O(health_url) read may take.
    type: int
    default: 10
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Read the Ray and vLLM units of this node
  multinode.vllm.unit_state:
    runtime: native
    units:
      - name: ray-head
        files: [/etc/systemd/system/ray-head.service, /etc/multinode-vllm/ray-head.env]
      - name: vllm
        files: [/etc/systemd/system/vllm.service, /etc/multinode-vllm/vllm.env]
  register: node_units
"""

RETURN = r"""
units:
  description: >-
    Unit name -> present (unit file known / container exists), active, state, started_at (seconds
    since the epoch, 0 when not running), need_daemon_reload, restarts, files_changed_at, drifted.
  type: dict
  returned: always
restart:
  description: Unit name -> why it must restart (its files changed after it started).
  type: dict
  returned: always
started_at:
  description: Unit name -> started_at, the start times alone.
  type: dict
  returned: always
restarts:
  description: >-
    Unit name -> restarts by systemd (NRestarts) or Docker (RestartCount) on their own since the last
    start that was asked for (a manual start or restart resets them).
  type: dict
  returned: always
now:
  description: The node's clock when it was read (seconds since the epoch), to tell a unit's age.
  type: int
  returned: always
ray:
  description: What Ray sees (the keys of M(multinode.vllm.ray_cluster_info)'s result), when O(ray) was queried.
  type: dict
  returned: when O(ray) is given and its unit runs
health:
  description: C(status) of the O(health_url) read (-1 without an answer) and C(msg).
  type: dict
  returned: when O(health_url) is given and its unit runs
"""

import os
import threading
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._units import (
    file_mtimes,
    parse_docker_inspect,
    parse_systemctl_show,
    systemctl_show_argv,
    systemd_state,
    unit_report,
)
from ansible_collections.multinode.vllm.plugins.module_utils._ray import build_query_argv, query_once, verdict
from ansible.module_utils.urls import open_url


def read_states(module, runtime, names):
    if not names:
        return {}
    if runtime == "native":
        rc, out, err = module.run_command(systemctl_show_argv(names), check_rc=False)
        if rc != 0:
            module.fail_json(msg="systemctl show failed (rc=%s): %s" % (rc, err.strip()))
        blocks = parse_systemctl_show(out)
        states = dict((n, systemd_state(blocks[i])) for i, n in enumerate(names) if i < len(blocks))
        for st in states.values():
            # A unit file deleted without a daemon-reload stays "loaded": the file decides.
            st["present"] = st["present"] and bool(st["fragment"]) and os.path.exists(st["fragment"])
        return states
    # docker inspect prints the containers that exist and fails for the others: both are answers.
    _rc, out, _err = module.run_command(["docker", "inspect", *names], check_rc=False)
    return parse_docker_inspect(out)


def ask_ray(module, spec, argv):
    summary, error = query_once(lambda a: module.run_command(a, check_rc=False), argv)
    return verdict(summary, error, spec["address"], spec["expected_nodes"], spec["expected_gpus"])


def ask_health(url, timeout):
    try:
        resp = open_url(url, timeout=timeout, validate_certs=False)
        return {"status": resp.getcode(), "msg": "OK"}
    except Exception as exc:  # an HTTPError carries its code; anything else is no answer
        code = getattr(exc, "code", None)
        return {"status": code if isinstance(code, int) else -1, "msg": str(exc)}


def probes(module, units):
    """The Ray query and the health read, each only when its unit runs, at the same time."""
    p = module.params
    jobs = {}
    ray = p["ray"]
    if ray and (units.get(ray["when_active"]) or {}).get("active"):
        try:  # checked here: fail_json in a thread would end the thread, not the module
            argv = build_query_argv(ray["python_cmd"], ray["address"], ray["query_timeout"])
        except ValueError as exc:
            module.fail_json(msg=str(exc))
        jobs["ray"] = lambda: ask_ray(module, ray, argv)
    if p["health_url"] and (units.get(p["health_when_active"]) or {}).get("active"):
        jobs["health"] = lambda: ask_health(p["health_url"], p["health_timeout"])
    out = {}

    def one(key):
        out[key] = jobs[key]()

    threads = [threading.Thread(target=one, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            runtime=dict(type="str", choices=["native", "docker"], required=True),
            units=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    name=dict(type="str", required=True),
                    files=dict(type="list", elements="path", default=[]),
                ),
            ),
            ray=dict(
                type="dict",
                options=dict(
                    address=dict(type="str", required=True),
                    python_cmd=dict(type="list", elements="str", default=["python3"]),
                    expected_nodes=dict(type="list", elements="str", default=[]),
                    expected_gpus=dict(type="float"),
                    query_timeout=dict(type="int", default=30),
                    when_active=dict(type="str", default="ray-head"),
                ),
            ),
            health_url=dict(type="str"),
            health_when_active=dict(type="str", default="vllm"),
            health_timeout=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    units = module.params["units"]
    names = [u["name"] for u in units]
    states = read_states(module, module.params["runtime"], names)
    files = file_mtimes([p for u in units for p in u["files"]])
    report = unit_report(module.params["runtime"], units, states, files)
    report.update(probes(module, report.get("units") or {}))
    module.exit_json(changed=False, now=int(time.time()), **report)


if __name__ == "__main__":
    main()
