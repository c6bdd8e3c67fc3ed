#!/usr/bin/python
# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vllm_health
short_description: Wait for vLLM's /health, and stop early when its service keeps failing
version_added: "0.1.0"
description:
  - Polls C(GET URL/health) until it answers 200 or O(timeout) passes.
  - Between polls it reads the state of the process that serves it (the systemd unit of the native
    runtime, or the container of the docker runtime). When that process has failed, or has been
    restarted more than O(max_restarts) times since the wait began (a bad model path, out of
    memory or a wrong flag make vLLM exit, systemd or Docker start it again, and /health never
    answers), it stops at once with the last lines of the log instead of waiting O(timeout).
  - Read-only; runs in check mode.
options:
  url:
    description: Base URL of the server, for example C(http://10.0.0.11:8000).
    type: str
    required: true
  runtime:
    description: How vLLM runs on this node; V(none) only polls the URL.
    type: str
    choices: [native, docker, none]
    default: native
  name:
    description: The systemd unit (native) or the container (docker).
    type: str
    default: vllm
  timeout:
    description: Seconds to wait for 200.
    type: int
    default: 1800
  poll_interval:
    description: Seconds between two polls.
    type: int
    default: 5
  already_waited:
    description:
      - Seconds the same vLLM process has already been starting before this wait (a rerun that found
        it loading after systemd or Docker restarted it on its own); the wait ends O(timeout) seconds
        after that process started, not after this call.
    type: int
    default: 0
  max_restarts:
    description: Restarts of the process during the wait after which it is considered crash-looping.
    type: int
    default: 2
  log_lines:
    description: Lines of the log returned (and shown) when the wait fails.
    type: int
    default: 30
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Wait for vLLM to load the model
  multinode.vllm.vllm_health:
    url: "http://10.0.0.11:8000"
    runtime: docker
    timeout: 1800
"""

RETURN = r"""
status:
  description: The last HTTP status of /health (-1 when nothing answered).
  type: int
  returned: always
elapsed:
  description: Seconds waited.
  type: float
  returned: always
restarts:
  description: Restarts of the process seen during the wait.
  type: int
  returned: always
state:
  description: The process state last read (systemd ActiveState, or the container's status).
  type: str
  returned: always
log_tail:
  description: The last lines of the log, when the wait failed.
  type: list
  elements: str
  returned: failure
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url


def health(url):
    try:
        resp = open_url(url.rstrip("/") + "/health", method="GET", timeout=10, validate_certs=False)
        return int(resp.getcode())
    except Exception as exc:  # HTTPError carries a code; connection errors do not
        return int(getattr(exc, "code", -1) or -1)


def process_state(module, runtime, name):
    """(state, restart count) of the unit or container; ('', 0) when it cannot be read."""
    if runtime == "native":
        rc, out, _err = module.run_command(
            ["systemctl", "show", "--property=ActiveState", "--property=NRestarts", name], check_rc=False
        )
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        restarts = props.get("NRestarts", "0")
        return props.get("ActiveState", ""), int(restarts) if restarts.isdigit() else 0
    if runtime == "docker":
        rc, out, _err = module.run_command(
            ["docker", "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", name], check_rc=False
        )
        fields = out.split()
        if rc != 0 or len(fields) != 2:
            return "missing", 0
        return fields[0], int(fields[1]) if fields[1].isdigit() else 0
    return "", 0


def log_tail(module, runtime, name, lines):
    if runtime == "native":
        argv = ["journalctl", "-u", name, "-n", str(lines), "--no-pager", "--output=cat"]
    elif runtime == "docker":
        argv = ["docker", "logs", "--tail", str(lines), name]
    else:
        return []
    _rc, out, err = module.run_command(argv, check_rc=False)
    return ((out or "") + (err or "")).strip().splitlines()[-lines:]


def give_up_reason(runtime, name, state, restarts, max_restarts):
    """Why waiting longer cannot help, or '' to keep waiting."""
    what = "unit %s" % name if runtime == "native" else "container %s" % name
    if state in ("failed", "exited", "dead", "missing"):
        return "the %s is %s" % (what, state)
    if state == "inactive":
        return "the %s is not running" % what
    if restarts > max_restarts:
        return "the %s restarted %d times while waiting (crash loop)" % (what, restarts)
    return ""


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            runtime=dict(type="str", choices=["native", "docker", "none"], default="native"),
            name=dict(type="str", default="vllm"),
            timeout=dict(type="int", default=1800),
            poll_interval=dict(type="int", default=5),
            max_restarts=dict(type="int", default=2),
            already_waited=dict(type="int", default=0),
            log_lines=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    p = module.params
    started = time.monotonic()
    deadline = started + max(p["timeout"] - max(p["already_waited"], 0), p["poll_interval"], 1)
    _state, baseline = process_state(module, p["runtime"], p["name"])
    status, state, restarts, reason = -1, "", 0, ""
    while True:
        status = health(p["url"])
        if status == 200:
            break
        state, count = process_state(module, p["runtime"], p["name"])
        restarts = max(count - baseline, 0)
        reason = give_up_reason(p["runtime"], p["name"], state, restarts, p["max_restarts"])
        if reason or time.monotonic() + p["poll_interval"] > deadline:
            break
        time.sleep(max(p["poll_interval"], 1))

    result = dict(
        changed=False, status=status, elapsed=round(time.monotonic() - started, 1), restarts=restarts, state=state
    )
    if status == 200:
        module.exit_json(**result)
    tail = log_tail(module, p["runtime"], p["name"], p["log_lines"])
    if not reason:
        reason = "no 200 within %ss of its start (timeout)" % p["timeout"]
    result["log_tail"] = tail
    module.fail_json(
        msg="vLLM at %s/health answered %s: %s. Last log lines:\n%s"
        % (p["url"], status if status > 0 else "nothing", reason, "\n".join(tail)),
        **result,
    )


if __name__ == "__main__":
    main()
