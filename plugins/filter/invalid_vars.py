# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Type and value checks of inventory variables as Jinja2 filters for the validate phase."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: invalid_vars
short_description: Check inventory variables per host against a table of rules
description:
  - Takes the value of every checked variable on every host and a table of rules (port, int,
    fraction, choice, subset, bool, args, strings, env, envname, abspath, nonempty, name, secret).
  - Returns one problem per variable and value, naming the hosts and what a valid value is.
  - With O(clashes=true), returns instead the hosts where two ports in use share a number.
  - With O(mismatches=true), returns instead the settings whose rule says C(cluster) that are not
    one value on every host (8000 and "8000" agree).
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: Host name -> variable name -> value.
    type: dict
    required: true
  rules:
    description: Variable name -> rule (C(kind) and its parameters).
    type: dict
    required: true
  clashes:
    description: Return the port clashes instead of the invalid values.
    type: bool
    default: false
  mismatches:
    description: Return the cluster-wide settings that differ between hosts instead of the invalid values.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Stop if a port is not in 1-65535
  ansible.builtin.assert:
    that:
      - _problems | selectattr('check', 'equalto', 'port') | list | length == 0
    fail_msg: "{{ _problems | map(attribute='text') | join('; ') }}"
  vars:
    _values: {node1: {multinode_vllm_port: 70000}}
    _rules: {multinode_vllm_port: {kind: port}}
    _problems: "{{ _values | multinode.vllm.invalid_vars(_rules) }}"
"""

RETURN = r"""
_value:
  description: >-
    A list of problems (check, var, value, hosts, want, text), with O(clashes=true) a list of
    strings "host: var1=N, var2=N", with O(mismatches=true) a list of (var, text).
  type: list
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._checks import invalid_vars as _invalid_vars
from ansible_collections.multinode.vllm.plugins.module_utils._checks import cluster_mismatches, port_clashes


def invalid_vars(values, rules, clashes=False, mismatches=False):
    if not isinstance(values, dict) or not isinstance(rules, dict):
        raise AnsibleFilterError("invalid_vars: expects a dict of hosts and a dict of rules")
    plain = {str(h): dict(v) for h, v in values.items()}
    try:
        if clashes:
            return port_clashes(plain, dict(rules))
        if mismatches:
            return cluster_mismatches(plain, dict(rules))
        return _invalid_vars(plain, dict(rules))
    except ValueError as exc:
        raise AnsibleFilterError("invalid_vars: %s" % exc) from exc


class FilterModule:
    def filters(self):
        return {"invalid_vars": invalid_vars}
