# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The TP x PP rule as a Jinja2 filter: the validate and vllm_serve roles (the planner uses the same function)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: parallel_check
short_description: Does data x tensor x pipeline parallel fit the cluster's GPUs
description:
  - The one TP x PP rule of the collection (the validate and vllm_serve roles, the planner).
  - Needing more GPUs than O(nodes) x O(gpus_per_node) is refused. Using fewer is fine with the
    C(ray) backend (the rest stay idle, spare in the Ray cluster; C(note) says how many) and
    refused with C(mp), where vLLM runs on every node (C(--nnodes)) and must use every GPU.
  - With O(data_parallel_size) above 1 each replica (TP x PP GPUs) must lie whole within a node (TP x PP
    divides the GPUs per node), and DP x TP x PP obeys the same rule (with C(mp) DP x TP x PP uses every GPU).
  - An omitted size is chosen as the roles default it, TP = GPUs per node, PP = the stages the
    remaining GPUs make.
  - The messages name the inventory variables (C(vllm_serve_tensor_parallel_size),
    C(vllm_serve_pipeline_parallel_size), C(multinode_backend), C(validate_gpus_per_node)).
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: Tensor parallel size; null to choose.
    type: int
    required: true
  pipeline_parallel_size:
    description: Pipeline parallel size; null to choose.
    type: int
  nodes:
    description: Nodes in the cluster.
    type: int
    required: true
  gpus_per_node:
    description: GPUs each node gives the cluster.
    type: int
    required: true
  data_parallel_size:
    description: Replicas (data parallel); 1 for one replica that may span the nodes.
    type: int
    default: 1
  backend:
    description: C(ray) or C(mp).
    type: str
    choices: [ray, mp]
    default: ray
"""

EXAMPLES = r"""
- name: Stop if tensor x pipeline parallel does not fit the GPUs of the cluster
  ansible.builtin.assert:
    that:
      - _shape.problem | length == 0
    fail_msg: "{{ _shape.problem }}"
  vars:
    _shape: >-
      {{ vllm_serve_tensor_parallel_size | multinode.vllm.parallel_check(vllm_serve_pipeline_parallel_size,
         nodes=groups['vllm_cluster'] | length, gpus_per_node=8, backend=multinode_backend) }}
"""

RETURN = r"""
_value:
  description: >-
    data_parallel_size, tensor_parallel_size and pipeline_parallel_size (as given or chosen), gpus
    (the cluster's), gpus_used (DP x TP x PP), problem (the message, empty when the shape is fine) and note (the GPUs
    left idle, empty when none).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._planner import BACKENDS, parallel_shape


def _size(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or isinstance(value, bool):
        raise AnsibleFilterError("parallel_check: %s must be a positive integer, got %r" % (name, value))
    return number


def parallel_check(
    tensor_parallel_size,
    pipeline_parallel_size=None,
    nodes=None,
    gpus_per_node=None,
    backend="ray",
    data_parallel_size=1,
):
    if backend not in BACKENDS:
        raise AnsibleFilterError("parallel_check: backend must be one of %s, got %r" % (", ".join(BACKENDS), backend))
    return parallel_shape(
        _size(tensor_parallel_size, "tensor_parallel_size", allow_none=True),
        _size(pipeline_parallel_size, "pipeline_parallel_size", allow_none=True),
        _size(nodes, "nodes"),
        _size(gpus_per_node, "gpus_per_node"),
        backend,
        dp=_size(data_parallel_size, "data_parallel_size"),
    )


class FilterModule:
    def filters(self):
        return {"parallel_check": parallel_check}
