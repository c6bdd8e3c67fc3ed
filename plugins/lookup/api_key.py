# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The endpoint's API key, failing closed: given, or generated once on the controller and reused."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: api_key
short_description: The API key vLLM serves with (given, generated once, or none when the API is open)
description:
  - Fail closed. The key given in O(key) (vault it) is used as it is. With no key, one is generated
    once on the controller into O(dir)/api-key (mode 0600, its directory 0700) and reused by every
    later run, the bench phase and the CLI. No key at all only with O(open=true)
    (C(multinode_api_open)), which validate and status report.
  - Returns one string, the key, or an empty string when the API is open.
author: multinode.vllm developers (@multinode)
options:
  key:
    description: The key given by the operator (C(multinode_api_key)); empty for a generated one.
    type: str
    default: ""
  open:
    description: Serve without a key (C(multinode_api_open)).
    type: bool
    default: false
  dir:
    description: The controller's credentials directory (C(multinode_credentials_dir)).
    type: path
    required: true
"""

EXAMPLES = r"""
- name: The key the endpoint wants
  ansible.builtin.debug:
    msg: >-
      {{ lookup('multinode.vllm.api_key', key=multinode_api_key, open=multinode_api_open,
                dir=multinode_credentials_dir) | length }}
"""

RETURN = r"""
_raw:
  description: The API key, or an empty string when the API is open.
  type: list
  elements: str
"""

from ansible.errors import AnsibleLookupError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.lookup import LookupBase
from ansible_collections.multinode.vllm.plugins.module_utils._credentials import resolve_api_key


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        try:
            key = resolve_api_key(self.get_option("key") or "", self.get_option("open"), self.get_option("dir"))
        except (OSError, ValueError) as exc:
            raise AnsibleLookupError("multinode.vllm.api_key: %s" % to_native(exc)) from exc
        return [key]
