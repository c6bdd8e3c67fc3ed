# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The model_cache role's remedy for an incomplete model, as a Jinja2 filter."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: model_cache_fix
short_description: What to do when the model on a node is incomplete
description:
  - Chooses the fix the model_cache role gives when vLLM's files are incomplete on a node - shared
    storage that is not shared, a broken hub download, a broken copy source, or the user's own
    files at C(multinode_model) - and names the path to repair.
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: C(multinode_model).
    type: str
    required: true
  hub:
    description: The model comes from the Hugging Face hub.
    type: bool
    required: true
  local:
    description: Every node keeps its own copy (C(model_cache_storage=local)).
    type: bool
    required: true
  is_head:
    description: This node is the head.
    type: bool
    required: true
  head_complete:
    description: The head found the model complete.
    type: bool
    required: true
  hf_home:
    description: C(multinode_hf_home).
    type: str
    required: true
  download_home:
    description: The HF_HOME the download went to.
    type: str
    required: true
  repo_folder:
    description: The hub cache's folder of the repository (C(models--org--name)).
    type: str
    required: true
  copy_here:
    description: This node copies the model.
    type: bool
    required: true
  copy_src:
    description: Where that copy comes from.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Show the fix for a user's own broken files
  ansible.builtin.debug:
    msg: >-
      {{ '/models/llama' | multinode.vllm.model_cache_fix(hub=false, local=false, is_head=true, head_complete=false,
         hf_home='/var/cache/hf', download_home='/var/cache/hf', repo_folder='', copy_here=false, copy_src='') }}
"""

RETURN = r"""
_value:
  description: One sentence, the fix.
  type: str
"""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.multinode.vllm.plugins.module_utils._model import cache_fix


def model_cache_fix(model, **kwargs):
    flags = ("hub", "local", "is_head", "head_complete", "copy_here")
    texts = ("hf_home", "download_home", "repo_folder", "copy_src")
    missing = [k for k in flags + texts if k not in kwargs]
    if missing or set(kwargs) - set(flags + texts):
        raise AnsibleFilterError("model_cache_fix: give exactly %s" % ", ".join(flags + texts))
    args = {k: boolean(kwargs[k], strict=False) for k in flags}
    args.update({k: str(kwargs[k]).strip() for k in texts})
    return cache_fix(model=str(model), **args)


class FilterModule:
    def filters(self):
        return {"model_cache_fix": model_cache_fix}
