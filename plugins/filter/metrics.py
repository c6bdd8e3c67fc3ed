# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vLLM's /metrics per engine as a Jinja2 filter (plugins/module_utils/_metrics.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: vllm_engines
short_description: vLLM's /metrics per engine, and whether every data-parallel engine served
description:
  - Parses the body of vLLM's /metrics (the Prometheus text format, with prometheus_client's
    parser) and folds the series of each engine (the C(engine) label, its data-parallel rank) into
    one record - success (finished requests), running, waiting, kv_cache_usage,
    prefix_cache_queries, prefix_cache_hits, generation_tokens, prompt_tokens.
  - With O(expected) it also says which engines 0 to O(expected) - 1 are missing or finished no
    request (C(problem) is empty when every one served).
  - Runs on the controller and needs the Python package prometheus-client there.
  - The same plugin file also provides C(vllm_metrics_summary) - two /metrics bodies read some
    seconds apart give what C(status) shows per engine - requests running and waiting, KV-cache
    usage, prefix-cache hit rate, finished requests and generation tokens per second over the
    window, and their totals.
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: The body of GET /metrics.
    type: str
    required: true
  expected:
    description: The number of engines (the data-parallel size); 0 only parses.
    type: int
    default: 0
  before:
    description:
      - The /metrics body read before the requests were sent; an engine must then have finished a
        request since (a counter that grew in an earlier run does not count). Each record gains
        C(success_new).
    type: str
"""

EXAMPLES = r"""
- name: Stop if an engine served nothing
  ansible.builtin.assert:
    that: (metrics.content | multinode.vllm.vllm_engines(expected=2)).problem == ''
"""

RETURN = r"""
_value:
  description: C(engines) (engine label to its record); with O(expected) also C(missing), C(idle) and C(problem).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._metrics import (
    engine_check,
    engine_metrics,
    metrics_summary,
)


def vllm_engines(text, expected=0, before=None):
    try:
        count = int(expected)
    except (TypeError, ValueError):
        raise AnsibleFilterError("vllm_engines: expected must be a whole number, got %r" % (expected,)) from None
    try:
        if count <= 0:
            return {"engines": engine_metrics(text)}
        return engine_check(text, count, before)
    except ValueError as exc:
        raise AnsibleFilterError("vllm_engines: %s" % exc) from exc


def vllm_metrics_summary(first, second, seconds):
    try:
        return metrics_summary(first, second, float(seconds))
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError("vllm_metrics_summary: %s" % exc) from exc


class FilterModule:
    def filters(self):
        return {"vllm_engines": vllm_engines, "vllm_metrics_summary": vllm_metrics_summary}
