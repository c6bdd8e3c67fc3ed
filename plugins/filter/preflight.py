# Copyright (c) multinode.vllm developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preflight checks across nodes as a Jinja2 filter."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: preflight_checks
short_description: The preflight checks across the nodes, from their facts
description:
  - Reads C(ansible_facts) (C(multinode_gpu), C(multinode_ib), C(multinode_fabric)) of each host
    of O(hosts) in C(hostvars) and returns the rows and problems the preflight role asserts on, in
    host order; a host without those facts reads as none (no driver, 0 GPUs, no address).
author: multinode.vllm developers (@multinode)
options:
  _input:
    description: C(hostvars).
    type: dict
    required: true
  hosts:
    description: The hosts of the play.
    type: list
    elements: str
    required: true
  driver_version:
    description: The driver branch or version every node must run (C(preflight_driver_version)); empty for any.
    type: str
    default: ""
  ib_required_ports:
    description: Usable InfiniBand ports each node needs (C(preflight_ib_required_ports)).
    type: int
    default: 0
  ib_hca_prefix:
    description: HCA name prefix, for the message (C(preflight_ib_hca_prefix)).
    type: str
    default: mlx5
"""

EXAMPLES = r"""
- name: Stop if the nodes run different NVIDIA drivers
  ansible.builtin.assert:
    that:
      - _checks.driver_mismatch | length == 0
  vars:
    _checks: "{{ hostvars | multinode.vllm.preflight_checks(ansible_play_hosts, driver_version='550') }}"
"""

RETURN = r"""
_value:
  description: >-
    C(drivers) [{host, version}], C(driver_mismatch), C(counts) [{host, count}], C(nvlink_problems),
    C(ib_problems), C(fabric) [{host, interface, ip, subnet}], C(duplicate_ips) and C(loopback)
    (lists of strings, empty when the check passes).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.multinode.vllm.plugins.module_utils._cluster import host_vars
from ansible_collections.multinode.vllm.plugins.module_utils._cluster import preflight_checks as _preflight_checks
from jinja2 import Undefined


def preflight_checks(hostvars, hosts, driver_version="", ib_required_ports=0, ib_hca_prefix="mlx5"):
    if not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError("preflight_checks: give the list of hosts, e.g. ansible_play_hosts")
    try:
        facts = host_vars(hostvars, hosts, ["ansible_facts"], Undefined)
    except KeyError as exc:
        raise AnsibleFilterError("preflight_checks: no such host in hostvars: %s" % exc) from exc
    return _preflight_checks(facts, driver_version, ib_required_ports, ib_hca_prefix)


class FilterModule:
    def filters(self):
        return {"preflight_checks": preflight_checks}
