#!/usr/bin/python
# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vllm_requests
short_description: Send chat completions to vLLM all at once, and say how many answered
version_added: "0.1.0"
description:
  - Sends O(count) chat completions to C(URL/v1/chat/completions) concurrently (one thread each),
    so that vLLM's load balancer spreads them over its data-parallel engines (requests sent one
    after another all go to the idle engine 0).
  - Fails when any request does not answer 200 with text, with the first errors.
  - Read-only for the cluster (generation only); runs in check mode.
options:
  url:
    description: Base URL of the server, for example C(http://10.0.0.11:8000).
    type: str
    required: true
  model:
    description: The served model name.
    type: str
    required: true
  api_key:
    description: The API key (sent as a bearer token); empty sends none.
    type: str
    default: ""
  prompt:
    description: The user message of every request.
    type: str
    default: "Say hello."
  count:
    description: Requests to send at once.
    type: int
    default: 8
  max_tokens:
    description: Tokens each request may generate (at least one, vLLM's C(min_tokens)).
    type: int
    default: 8
  timeout:
    description: Seconds each request may take.
    type: int
    default: 120
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Load every data-parallel engine
  multinode.vllm.vllm_requests:
    url: "http://10.0.0.11:8000"
    model: llama-3.1-8b
    api_key: "{{ vault_api_key }}"
    count: 32
"""

RETURN = r"""
sent:
  description: Requests sent.
  type: int
  returned: always
answered:
  description: Requests that answered 200 with text.
  type: int
  returned: always
errors:
  description: The first errors (status and reason), at most five.
  type: list
  elements: str
  returned: always
elapsed:
  description: Seconds from the first request to the last answer.
  type: float
  returned: always
"""

import json
import threading
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._openai import answer_text, api_call, chat_body


def chat(url, model, api_key, prompt, max_tokens, timeout):
    """'' when the completion answered with text, else why not."""
    status, doc, err = api_call(url, "/v1/chat/completions", api_key, chat_body(model, prompt, max_tokens), timeout)
    if status != 200:
        return "%s: %s" % (status if status > 0 else "no answer", (err or json.dumps(doc))[:200])
    return "" if answer_text(doc) else "200 without text"


def send_all(count, send):
    """Call send() count times at once (one thread each); the errors, in order of the requests."""
    results = [""] * count

    def one(i):
        results[i] = send()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            model=dict(type="str", required=True),
            api_key=dict(type="str", default="", no_log=True),
            prompt=dict(type="str", default="Say hello."),
            count=dict(type="int", default=8),
            max_tokens=dict(type="int", default=8, no_log=False),
            timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["count"] < 1 or p["max_tokens"] < 1 or p["timeout"] < 1:
        module.fail_json(msg="count, max_tokens and timeout must be at least 1")
    started = time.monotonic()
    errors = send_all(
        p["count"], lambda: chat(p["url"], p["model"], p["api_key"], p["prompt"], p["max_tokens"], p["timeout"])
    )
    result = dict(
        changed=False,
        sent=p["count"],
        answered=p["count"] - len(errors),
        errors=errors[:5],
        elapsed=round(time.monotonic() - started, 2),
    )
    if errors:
        module.fail_json(
            msg="%d of %d chat completions sent at once to %s failed: %s"
            % (len(errors), p["count"], p["url"], "; ".join(errors[:3])),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
