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
  model:
    description:
      - After /health answers 200, C(GET URL/v1/models) must list this model id; empty skips the check.
    type: str
    default: ""
  chat_prompt:
    description:
      - After the model check, C(POST URL/v1/chat/completions) with this user message (greedy,
        at least one token) must return text; empty skips it. Needs O(model).
    type: str
    default: ""
  chat_max_tokens:
    description: C(max_tokens) of the chat completion.
    type: int
    default: 16
  chat_timeout:
    description: Seconds for the chat completion.
    type: int
    default: 120
  api_key:
    description: Bearer token for C(/v1/models) and the chat completion (vLLM's C(--api-key)); empty sends none.
    type: str
    default: ""
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Wait for vLLM to load the model
  multinode.vllm.vllm_health:
    url: "http://10.0.0.11:8000"
    runtime: docker
    timeout: 1800

- name: Wait for /health, then check the model list and a real completion in the same call
  multinode.vllm.vllm_health:
    url: "http://10.0.0.11:8000"
    model: tiny-llama
    chat_prompt: Say hello in one short sentence.
    api_key: "{{ vault_api_key }}"
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
models:
  description: The model ids /v1/models lists (with O(model)).
  type: list
  elements: str
  returned: success
answer:
  description: The text of the chat completion (with O(chat_prompt)).
  type: str
  returned: success
log_tail:
  description: The last lines of the log, when the wait failed.
  type: list
  elements: str
  returned: failure
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._openai import answer_text, api_call, chat_body


def health(url):
    """The HTTP status of GET URL/health, -1 when nothing answered."""
    return api_call(url, "/health", "", timeout=10)[0]


def served_problem(url, model, chat_prompt, chat_max_tokens, chat_timeout, api_key):
    """('', models, answer) when /v1/models lists MODEL and a chat completion has text, else (why, ...)."""
    status, doc, err = api_call(url, "/v1/models", api_key)
    if status != 200 or not isinstance(doc, dict):
        return "GET %s/v1/models answered %s: %s" % (url, status if status > 0 else "nothing", err or doc), [], ""
    models = [m.get("id") for m in doc.get("data") or [] if isinstance(m, dict)]
    if model not in models:
        return "/v1/models lists %s, not %s" % (models, model), models, ""
    if not chat_prompt:
        return "", models, ""
    status, doc, err = api_call(
        url, "/v1/chat/completions", api_key, chat_body(model, chat_prompt, chat_max_tokens), chat_timeout
    )
    answer = answer_text(doc)
    if status != 200 or not answer:
        return (
            "the chat completion returned no text (HTTP %s): %s"
            % (status if status > 0 else "nothing", err or json.dumps(doc)[:500]),
            models,
            "",
        )
    return "", models, answer


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
            model=dict(type="str", default=""),
            chat_prompt=dict(type="str", default=""),
            chat_max_tokens=dict(type="int", default=16, no_log=False),
            chat_timeout=dict(type="int", default=120),
            api_key=dict(type="str", default="", no_log=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["chat_prompt"] and not p["model"]:
        module.fail_json(msg="chat_prompt needs model: the chat completion names the served model")
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
    if status == 200 and not p["model"]:
        module.exit_json(**result)
    if status == 200:
        problem, result["models"], result["answer"] = served_problem(
            p["url"], p["model"], p["chat_prompt"], p["chat_max_tokens"], p["chat_timeout"], p["api_key"]
        )
        if not problem:
            module.exit_json(**result)
        module.fail_json(msg="vLLM at %s answers /health, but %s" % (p["url"], problem), **result)
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
