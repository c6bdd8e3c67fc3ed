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
        description:
          - The unit that must run for the query. An empty string asks Ray whatever runs (the
            status playbook does, so that the answer says why Ray cannot be reached).
        type: str
        default: ray-head
      status_cmd:
        description:
          - Also run this command (Ray's own C(ray status)) beside the query; its output is
            RV(ray_status). Empty runs nothing.
        type: list
        elements: str
        default: []
  health_url:
    description: Also GET this URL (vLLM's /health) when the unit O(health_when_active) runs; RV(health).
    type: str
  health_when_active:
    description: The unit that must run for the O(health_url) read; an empty string reads it whatever runs.
    type: str
    default: vllm
  health_timeout:
    description: Seconds the O(health_url) read (and each of O(models_url) and O(metrics_url)) may take.
    type: int
    default: 10
  models_url:
    description:
      - Also GET this URL (vLLM's /v1/models, with O(api_key)) beside the health read, when the
        health read is made; RV(models).
    type: str
  api_key:
    description: The bearer token of the O(models_url) read (vLLM's API key); none when empty.
    type: str
    default: ""
  metrics_url:
    description:
      - Also GET this URL (vLLM's /metrics) twice, O(metrics_window) seconds apart, after a health
        read that answered 200; RV(metrics).
    type: str
  metrics_window:
    description: Seconds between the two O(metrics_url) reads.
    type: float
    default: 2
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
ray_status:
  description: C(rc) and C(stdout_lines) of O(ray.status_cmd).
  type: dict
  returned: when O(ray.status_cmd) is given and Ray was asked
models:
  description: >-
    C(status) of the O(models_url) read (-1 without an answer), C(msg) and C(json) (the parsed
    body, or null).
  type: dict
  returned: when O(models_url) is given and the health read was made
metrics:
  description: >-
    C(first) and C(second), the two O(metrics_url) reads, each with C(status) and C(content) (the
    body, empty without an answer).
  type: dict
  returned: when O(metrics_url) is given and the health read answered 200
"""

import json
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


def http_get(url, timeout, headers=None):
    """{status, msg, body}: status -1 without an answer (an HTTPError carries its code)."""
    try:
        resp = open_url(url, timeout=timeout, validate_certs=False, headers=headers or {})
        return {"status": resp.getcode(), "msg": "OK", "body": resp.read()}
    except Exception as exc:
        code = getattr(exc, "code", None)
        return {"status": code if isinstance(code, int) else -1, "msg": str(exc), "body": b""}


def ask_health(url, timeout):
    got = http_get(url, timeout)
    return {"status": got["status"], "msg": got["msg"]}


def ask_models(url, timeout, api_key):
    got = http_get(url, timeout, {"Authorization": "Bearer " + api_key} if api_key else None)
    try:
        parsed = json.loads(got["body"]) if got["status"] == 200 else None
    except ValueError:
        parsed = None
    return {"status": got["status"], "msg": got["msg"], "json": parsed}


def ask_metrics(url, timeout, window):
    """Two reads of /metrics, window seconds apart (rates: tokens/s, requests/s)."""
    reads = []
    for i in range(2):
        if i:
            time.sleep(window)
        got = http_get(url, timeout)
        reads.append({"status": got["status"], "content": got["body"].decode("utf-8", "replace")})
    return {"first": reads[0], "second": reads[1]}


def runs(units, name):
    """Whether the probe of unit `name` is made: it runs, or no unit was named ('')."""
    return not name or bool((units.get(name) or {}).get("active"))


def probes(module, units):
    """The Ray query, Ray's status, and vLLM's health (then its metrics) and models, each only
    when its unit runs, at the same time: a head's whole probe is one round trip."""
    p = module.params
    jobs = {}
    out = {}  # the jobs' answers; the health job adds the metrics it read after a 200
    ray = p["ray"]
    if ray and runs(units, ray["when_active"]):
        try:  # checked here: fail_json in a thread would end the thread, not the module
            argv = build_query_argv(ray["python_cmd"], ray["address"], ray["query_timeout"])
        except ValueError as exc:
            module.fail_json(msg=str(exc))
        jobs["ray"] = lambda: ask_ray(module, ray, argv)
        if ray["status_cmd"]:

            def ray_status():
                rc, stdout, _err = module.run_command(ray["status_cmd"], check_rc=False)
                return {"rc": rc, "stdout_lines": stdout.splitlines()}

            jobs["ray_status"] = ray_status
    if p["health_url"] and runs(units, p["health_when_active"]):
        timeout = p["health_timeout"]

        def health():
            got = ask_health(p["health_url"], timeout)
            if p["metrics_url"] and got["status"] == 200:
                out["metrics"] = ask_metrics(p["metrics_url"], timeout, p["metrics_window"])
            return got

        jobs["health"] = health
        if p["models_url"]:
            jobs["models"] = lambda: ask_models(p["models_url"], timeout, p["api_key"])

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
                    status_cmd=dict(type="list", elements="str", default=[]),
                ),
            ),
            health_url=dict(type="str"),
            health_when_active=dict(type="str", default="vllm"),
            health_timeout=dict(type="int", default=10),
            models_url=dict(type="str"),
            api_key=dict(type="str", default="", no_log=True),
            metrics_url=dict(type="str"),
            metrics_window=dict(type="float", default=2),
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
