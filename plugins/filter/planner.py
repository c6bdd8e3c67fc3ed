# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The planner as a Jinja2 filter for the validate phase."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: vllm_plan
short_description: Check data, tensor and pipeline parallel and weights + KV cache against a cluster
description:
  - Computes the parameter count and KV cache bytes per token from a model's C(config.json),
    then checks that DP x TP x PP matches the GPUs and that weights and KV cache fit in GPU memory.
  - With data parallel every replica (TP x PP GPUs) lies within one node and holds its own KV cache;
    with expert parallel the routed experts are split over the DP x TP ranks.
  - Fails with a message naming the variable to change when the input is invalid.
  - The TP x PP rule alone is the C(parallel_check) filter (the same function).
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: A model's config.json as a dict, or a path to it or to the model directory.
    type: raw
    required: true
  nodes:
    description: Number of nodes.
    type: int
    required: true
  gpus_per_node:
    description: GPUs per node.
    type: int
    required: true
  gpu_memory_bytes:
    description: Memory of one GPU in bytes.
    type: int
    required: true
  gpu_memory_utilization:
    description: Fraction of GPU memory vLLM may use.
    type: float
    default: 0.9
  max_model_len:
    description: Maximum context length; the model's own when omitted.
    type: int
  dtype:
    description: Weight dtype (auto takes the config's torch_dtype).
    type: str
    default: auto
  tensor_parallel_size:
    description: Tensor parallel size; GPUs per node when omitted.
    type: int
  pipeline_parallel_size:
    description:
      - Pipeline parallel size. When omitted, the planner chooses - the stages the GPUs make, at most one
        per layer of the model - preferring a shape that fits.
    type: int
  data_parallel_size:
    description:
      - Replicas of the model, each TP x PP GPUs within one node. When it, TP and PP are all omitted
        the planner proposes the layout (C(layout_reason) says why) - the smallest TP within a node that
        holds a replica and DP over the remaining GPUs, else one replica with PP across the nodes.
    type: int
  enable_expert_parallel:
    description: Split a MoE model's experts over the DP x TP ranks; refused on a dense model.
    type: bool
    default: false
  backend:
    description:
      - C(ray) lets TP x PP leave GPUs of the cluster idle (a note says how many); C(mp) needs TP x PP
        to use every GPU (vLLM runs on every node).
    type: str
    choices: [ray, mp]
    default: ray
"""

EXAMPLES = r"""
- name: Plan Llama 3.1 405B on 2 x 8 x H100
  ansible.builtin.debug:
    msg: "{{ '/models/llama-405b' | multinode.vllm.vllm_plan(nodes=2, gpus_per_node=8, gpu_memory_bytes=85899345920) }}"
"""

RETURN = r"""
_value:
  description: >-
    The plan, with data_parallel_size, tensor_parallel_size, pipeline_parallel_size,
    enable_expert_parallel, expert_parallel_size, experts_per_gpu, gpus, gpus_used, weight_bytes,
    kv_bytes_per_token, kv_cache_tokens (one replica), kv_cache_tokens_total, fits, reason,
    layout_reason and notes.
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._planner import (
    PARALLEL_NAMES,
    PlanError,
    load_config,
    plan,
)


def vllm_plan(config, **kwargs):
    try:
        if not isinstance(config, dict):
            config = load_config(str(config))
        # the messages name the inventory's variables (vllm_serve_tensor_parallel_size, ...)
        return plan(dict(config), names=PARALLEL_NAMES, **kwargs)
    except PlanError as exc:
        raise AnsibleFilterError(str(exc)) from exc
    except TypeError as exc:
        raise AnsibleFilterError("vllm_plan: %s" % exc) from exc


class FilterModule:
    def filters(self):
        return {"vllm_plan": vllm_plan}
