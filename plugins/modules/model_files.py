#!/usr/bin/python
# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: model_files
short_description: Check that a model checkpoint on the node is complete and of the planned size
description:
  - Reads a model directory (O(path)), or the snapshot of a Hugging Face repo in the cache under
    O(hf_home) (O(repo) at O(revision), the layout C(hf download) writes).
  - Complete means a readable C(config.json), at least one C(*.safetensors) file, every file an
    index (C(*.safetensors.index.json)) names present with the tensors the index assigns to it,
    and every safetensors file exactly as long as its header says (a truncated shard, an
    interrupted download, a dangling cache link are reported by name).
  - Only the headers are read, never the weights. With O(expected_weight_bytes) the weight files'
    total size is compared with it (the planner's weight bytes) within O(size_tolerance).
  - Never fails for what it finds; the role asserts on RV(complete) and RV(size_check).
author: multinode.vllm developers (@multinode)
attributes:
  check_mode:
    support: full
    description: Only reads.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  path:
    description: A model directory (config.json and safetensors files). Mutually exclusive with O(repo).
    type: path
  hf_home:
    description: The Hugging Face home (C(HF_HOME)); the cache is C(<hf_home>/hub).
    type: path
  repo:
    description: A Hugging Face repo id, read from the cache under O(hf_home).
    type: str
  revision:
    description:
      - The revision of O(repo); a 40-hex commit is the snapshot's name, a branch or tag is
        resolved through the cache's C(refs/<revision>).
    type: str
    default: main
  expected_weight_bytes:
    description: The weights' size the plan expects; 0 skips the size check.
    type: int
    default: 0
  size_tolerance:
    description: How far (a fraction) the weight files' size may differ from O(expected_weight_bytes).
    type: float
    default: 0.1
"""

EXAMPLES = r"""
- name: Check a model directory against the plan
  multinode.vllm.model_files:
    path: /srv/shared/models/llama-3.1-405b
    expected_weight_bytes: "{{ validate_plan.weight_bytes }}"
  register: model

- name: Check a download in the Hugging Face cache
  multinode.vllm.model_files:
    hf_home: /home/ubuntu/shared/.cache/huggingface
    repo: meta-llama/Llama-3.1-405B-Instruct
    revision: main
"""

RETURN = r"""
path:
  description: The directory read (for a repo, its snapshot; empty when the revision is not cached).
  returned: always
  type: str
commit:
  description: The snapshot's commit (repo only).
  returned: when repo is given
  type: str
exists:
  description: Whether the directory exists.
  returned: always
  type: bool
complete:
  description: Whether every check passed.
  returned: always
  type: bool
problems:
  description: One sentence per problem, naming the file.
  returned: always
  type: list
  elements: str
weight_files:
  description: The safetensors files vLLM loads (the index's, else every top-level one).
  returned: always
  type: list
  elements: str
weight_bytes:
  description: Total size of the weight files.
  returned: always
  type: int
tensor_count:
  description: Tensors in the weight files' headers.
  returned: always
  type: int
file_count:
  description: Top-level files in the directory.
  returned: always
  type: int
total_bytes:
  description: Total size of the top-level files.
  returned: always
  type: int
size_check:
  description: checked, ok, expected_bytes, actual_bytes, deviation (a signed fraction), tolerance.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multinode.vllm.plugins.module_utils._model import (
    ModelFileError,
    hub_snapshot,
    inspect_model,
    size_check,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path"),
            hf_home=dict(type="path"),
            repo=dict(type="str"),
            revision=dict(type="str", default="main"),
            expected_weight_bytes=dict(type="int", default=0),
            size_tolerance=dict(type="float", default=0.1),
        ),
        mutually_exclusive=[("path", "repo")],
        required_one_of=[("path", "repo")],
        required_together=[("repo", "hf_home")],
        supports_check_mode=True,
    )
    p = module.params
    if p["size_tolerance"] < 0 or p["expected_weight_bytes"] < 0:
        module.fail_json(msg="size_tolerance and expected_weight_bytes must be >= 0")
    extra = {}
    path = p["path"]
    if p["repo"]:
        try:
            path, commit, problem = hub_snapshot(p["hf_home"], p["repo"], p["revision"])
        except ModelFileError as exc:
            module.fail_json(msg=str(exc))
        extra["commit"] = commit
        if problem:
            module.exit_json(
                changed=False,
                path="",
                exists=False,
                complete=False,
                problems=[problem],
                weight_files=[],
                weight_bytes=0,
                tensor_count=0,
                file_count=0,
                total_bytes=0,
                size_check=size_check(0, p["expected_weight_bytes"], p["size_tolerance"]),
                **extra,
            )
    result = inspect_model(path, p["expected_weight_bytes"], p["size_tolerance"])
    result.pop("config", None)
    result.pop("index", None)
    module.exit_json(changed=False, **dict(result, **extra))


if __name__ == "__main__":
    main()
