#!/usr/bin/python
# Copyright: multinode.vllm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: validate_cluster
short_description: Every check of the validate phase in one task, on the controller
version_added: "0.1.0"
description:
  - The inventory's shape (one head, workers apart from it, C(vllm_cluster) equal to head and
    workers, one SSH address per host, names that resolve), every host's variables against
    O(rules), the API key, the API port against the internal ports, the cluster-wide settings, the
    GPUs per node, DP x TP x PP against the GPUs, the Dynamo layout, and the model plan (weights and
    KV cache against the GPU memory).
  - Stops at the first check that fails, with RV(check) naming it and C(msg) naming every variable,
    value and host at fault and the fix.
  - Reads each host's variables once from C(hostvars); contacts no node. An action plugin, so it
    always runs on the controller.
options:
  rules:
    description:
      - Variable -> rule (C(kind) and its parameters, C(optional), C(cluster), C(clash_when)); the
        kinds are those of C(plugins/module_utils/_checks.py).
    type: dict
    required: true
  default_files:
    description: The roles' C(defaults/main.yml) files; a variable a host leaves unset is checked at its default.
    type: list
    elements: path
    default: []
  spec_files:
    description:
      - The roles' C(meta/argument_specs.yml) files; a variable with a role's prefix that none
        documents is reported.
    type: list
    elements: path
    default: []
  prefixes:
    description: The prefixes of the collection's variables (C(multinode_), C(vllm_serve_), ...).
    type: list
    elements: str
    default: []
  head_group:
    description: The inventory group of the head (C(multinode_head_group)); empty for the roles' default.
    type: str
    default: ""
  worker_group:
    description: The inventory group of the workers (C(multinode_worker_group)); empty for the roles' default.
    type: str
    default: ""
  gpus_per_node:
    description: GPUs per node the plan assumes (C(validate_gpus_per_node)).
    type: raw
    default: 8
  gpu_memory_gib:
    description: Memory of one GPU in GiB (C(validate_gpu_memory_gib)).
    type: raw
    default: 80
  model_config_path:
    description:
      - The model's C(config.json) on the controller, or a directory holding it (C(validate_model_config_path)).
    type: str
    default: ""
  model_config:
    description: The model's C(config.json) content when no file is given (C(validate_model_config)).
    type: raw
    default: {}
  require_api_key:
    description: Refuse C(multinode_api_open) (C(validate_require_api_key)).
    type: bool
    default: false
  ignore_plan:
    description: Report the plan but go on when it does not fit (C(validate_ignore_plan)).
    type: bool
    default: false
  dynamo_vars:
    description: The variables of the Dynamo stack, read from the head, defaults filled in.
    type: list
    elements: str
    default: []
  plan_only:
    description:
      - Plan the model only, with these inputs instead of the inventory's cluster (the SLURM job's
        shape) - C(model), C(nodes), C(gpus_per_node), C(tp), C(pp), C(dp), C(ep), C(backend),
        C(dtype), C(max_model_len), C(utilization), and C(nodes_from) and C(gpus_from), the
        variables the planner's objections name.
    type: dict
author: multinode.vllm developers (@multinode)
"""

EXAMPLES = r"""
- name: Check the inventory, the variables and the model plan
  multinode.vllm.validate_cluster:
    rules:
      multinode_vllm_port: {kind: port, cluster: true}
      multinode_backend: {kind: choice, choices: [ray, mp], cluster: true}
    default_files: [roles/multinode/defaults/main.yml]
    model_config_path: tests/fixtures/models/llama-3.1-405b
  register: checked
"""

RETURN = r"""
check:
  description: The check that stopped the run (only when it failed), for example C(Stop if a port is not in 1-65535).
  returned: failed
  type: str
report:
  description: Lines to show - the plan, warnings (an open API, a misspelt variable), the SLURM note.
  returned: always
  type: list
  elements: str
plan:
  description:
    - The planner's result (TP, PP, DP, weight bytes, KV cache tokens, fits, reason); null without a
      model configuration.
  returned: success
  type: dict
dynamo_plans:
  description: One plan per Dynamo worker group (C(group), C(var), C(tp), C(plan)).
  returned: success
  type: list
  elements: dict
"""
