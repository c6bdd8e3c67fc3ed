#!/usr/bin/python
# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: slurm_job_wait
short_description: Wait for a SLURM job to run (and its server to answer), stop early when it dies
version_added: "0.1.0"
description:
  - Polls C(scontrol show job -o ID) until the job is RUNNING; while it is PENDING the reason
    SLURM gives (Resources, Priority, QOSMaxGRESPerUser ...) is kept and reported when the wait ends.
  - With O(health_url), it then polls C(GET health_url) until it answers 200, still reading the job's
    state between polls.
  - When the job ends (FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY ...) or leaves the queue
    during either wait, it stops at once with the last lines of the job's output file instead of
    waiting for the timeout.
  - Read-only; runs in check mode.
options:
  job_id:
    description: The job to wait for.
    type: str
    required: true
  timeout:
    description: Seconds to wait for RUNNING.
    type: int
    default: 600
  health_url:
    description:
      - URL that must answer 200 once the job runs (vLLM's /health); empty to skip.
      - C({head}) is replaced by the address of the job's first node (its NodeAddr).
    type: str
    default: ""
  health_timeout:
    description: Seconds to wait for O(health_url) after the job runs.
    type: int
    default: 1800
  poll_interval:
    description: Seconds between two polls.
    type: int
    default: 5
  output_lines:
    description: Lines of the job's output file returned (and shown) when the job dies.
    type: int
    default: 40
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Wait for the job to run and vLLM to answer
  multinode.vllm.slurm_job_wait:
    job_id: "{{ slurm_submit.stdout | trim }}"
    timeout: 600
    health_url: "http://{head}:8000/health"
  register: slurm_wait
"""

RETURN = r"""
job:
  description: The job's status (job_id, state, reason, nodes, head, head_addr, elapsed, time_limit, output).
  returned: always
  type: dict
pending_reasons:
  description: The reasons SLURM gave while the job was pending, in order, without repeats.
  returned: always
  type: list
  elements: str
waited:
  description: Seconds waited.
  returned: always
  type: float
output_tail:
  description: The last O(output_lines) lines of the job's output file (when the job died).
  returned: on failure
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.multinode.vllm.plugins.module_utils._slurm import job_status, parse_key_values


def read_job(module, job_id):
    rc, out, err = module.run_command(["scontrol", "show", "job", "-o", job_id])
    if rc != 0:
        if "Invalid job id" in (out + err):
            return {}
        module.fail_json(msg="scontrol show job %s failed (rc %s): %s" % (job_id, rc, err.strip() or out.strip()))
    return job_status(parse_key_values(out))


def node_addr(module, node):
    """The address SLURM reaches a node at (NodeAddr); the name when scontrol does not say."""
    if not node:
        return ""
    rc, out, _err = module.run_command(["scontrol", "show", "node", "-o", node])
    return parse_key_values(out).get("NodeAddr", node) if rc == 0 else node


def tail(path, lines):
    if not path:
        return []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines()[-lines:]
    except OSError as exc:
        return ["(cannot read %s: %s)" % (path, exc)]


def healthy(url):
    try:
        resp = open_url(url, timeout=5, validate_certs=False)
        return resp.getcode() == 200
    except Exception:  # connection refused, 503 while loading: not yet
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            job_id=dict(type="str", required=True),
            timeout=dict(type="int", default=600),
            health_url=dict(type="str", default=""),
            health_timeout=dict(type="int", default=1800),
            poll_interval=dict(type="int", default=5),
            output_lines=dict(type="int", default=40),
        ),
        supports_check_mode=True,
    )
    p = module.params
    t0 = time.monotonic()
    reasons = []
    last = {"job_id": p["job_id"]}
    output_path = ""

    def died(job, phase):
        lines = tail(output_path or job.get("output", ""), p["output_lines"])
        state = job.get("state") or "gone (no longer in the queue)"
        module.fail_json(
            msg="SLURM job %s %s %s after %.0f s (reason: %s). Last lines of %s:\n%s"
            % (
                p["job_id"],
                "ended" if job else "left the queue",
                phase,
                time.monotonic() - t0,
                job.get("reason", "") if job else state,
                output_path or job.get("output", "its output file"),
                "\n".join(lines),
            ),
            job=job or last,
            pending_reasons=reasons,
            waited=round(time.monotonic() - t0, 1),
            output_tail=lines,
        )

    deadline = t0 + p["timeout"]
    while True:
        job = read_job(module, p["job_id"])
        if job:
            last = job
            output_path = job.get("output") or output_path
        if not job or job["finished"]:
            died(job, "before it ran" if not reasons else "while pending")
        if job["running"]:
            break
        if job["state"] == "PENDING" and job["reason"] not in reasons:
            reasons.append(job["reason"])
        if time.monotonic() > deadline:
            module.fail_json(
                msg="SLURM job %s is still %s after %s s (reason: %s; seen: %s). Fix: free the resources, wait "
                "longer (slurm_submit_timeout), or ask for fewer (slurm_nodes, slurm_gpus_per_node)"
                % (p["job_id"], job["state"], p["timeout"], job["reason"], ", ".join(reasons) or "none"),
                job=job,
                pending_reasons=reasons,
                waited=round(time.monotonic() - t0, 1),
            )
        time.sleep(p["poll_interval"])

    last["head_addr"] = node_addr(module, last.get("head", ""))
    if p["health_url"]:
        url = p["health_url"].replace("{head}", last["head_addr"])
        deadline = time.monotonic() + p["health_timeout"]
        while not healthy(url):
            job = read_job(module, p["job_id"])
            if not job or job["finished"]:
                died(job, "before %s answered" % url)
            last = dict(job, head_addr=last["head_addr"])
            if time.monotonic() > deadline:
                lines = tail(output_path, p["output_lines"])
                module.fail_json(
                    msg="%s did not answer 200 within %s s of job %s running. Last lines of %s:\n%s"
                    % (url, p["health_timeout"], p["job_id"], output_path, "\n".join(lines)),
                    job=job,
                    pending_reasons=reasons,
                    waited=round(time.monotonic() - t0, 1),
                    output_tail=lines,
                )
            time.sleep(min(p["poll_interval"], 2))
    module.exit_json(changed=False, job=last, pending_reasons=reasons, waited=round(time.monotonic() - t0, 1))


if __name__ == "__main__":
    main()
